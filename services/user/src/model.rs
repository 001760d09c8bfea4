//! Accounts as the service sees them: checked registration and sign-in input,
//! roles, the users the store returns, and their wire forms.

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::auth::Role;
use shop_platform::pagination::timestamp;
use shop_proto::common::Money;
use shop_proto::user as pb;
use uuid::Uuid;

pub const MIN_PASSWORD_CHARS: usize = 12;
pub const MAX_PASSWORD_CHARS: usize = 128;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// A syntactically valid, lower-cased email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let email = raw.trim().to_lowercase();
        let invalid = |why: &str| ApiError::invalid("email", why);
        if email.is_empty() {
            return Err(invalid("is required"));
        }
        if email.chars().count() > MAX_EMAIL_CHARS {
            return Err(invalid("must be at most 254 characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("must not contain spaces or control characters"));
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return Err(invalid("must look like name@example.com"));
        };
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(invalid("must have one '@' with a name before it"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2
            || labels.iter().any(|l| {
                l.is_empty()
                    || l.starts_with('-')
                    || l.ends_with('-')
                    || !l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
        {
            return Err(invalid(
                "must have a domain such as example.com after the '@'",
            ));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the length policy (counted in characters).
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl Password {
    pub fn parse(raw: String) -> Result<Self, ApiError> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(ApiError::invalid(
                "password",
                "must be at least 12 characters",
            ));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(ApiError::invalid(
                "password",
                "must be at most 128 characters",
            ));
        }
        Ok(Self(raw))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A checked Register request.
#[derive(Debug)]
pub struct Registration {
    pub email: Email,
    pub password: Password,
    pub display_name: String,
}

impl TryFrom<pb::RegisterRequest> for Registration {
    type Error = ApiError;

    fn try_from(req: pb::RegisterRequest) -> Result<Self, ApiError> {
        let email = Email::parse(&req.email)?;
        let password = Password::parse(req.password)?;
        let display_name = req.display_name.trim().to_owned();
        if display_name.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(ApiError::invalid(
                "display_name",
                "must be at most 100 characters",
            ));
        }
        if display_name.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "display_name",
                "must not contain control characters",
            ));
        }
        Ok(Self {
            email,
            password,
            display_name,
        })
    }
}

/// A checked Login request. The password is not checked against the policy: a
/// wrong one fails the same way whatever its length.
#[derive(Debug)]
pub struct LoginAttempt {
    pub email: String,
    pub password: String,
}

impl TryFrom<pb::LoginRequest> for LoginAttempt {
    type Error = ApiError;

    fn try_from(req: pb::LoginRequest) -> Result<Self, ApiError> {
        if req.email.trim().is_empty() {
            return Err(ApiError::invalid("email", "is required"));
        }
        // No account has a longer one; a bound also keeps the sign-in throttle's keys small.
        if req.email.trim().chars().count() > MAX_EMAIL_CHARS {
            return Err(ApiError::invalid("email", "must be at most 254 characters"));
        }
        if req.password.is_empty() {
            return Err(ApiError::invalid("password", "is required"));
        }
        if req.password.chars().count() > MAX_PASSWORD_CHARS {
            return Err(ApiError::invalid(
                "password",
                "must be at most 128 characters",
            ));
        }
        Ok(Self {
            email: req.email.trim().to_lowercase(),
            password: req.password,
        })
    }
}

/// A user id from a request field.
pub fn parse_user_id(raw: &str) -> Result<Uuid, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid("user_id", "is required"));
    }
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid("user_id", "must be a UUID"))
}

pub fn role_to_db(role: Role) -> &'static str {
    match role {
        Role::Customer => "customer",
        Role::Admin => "admin",
    }
}

pub fn role_from_db(role: &str) -> Role {
    if role == "admin" {
        Role::Admin
    } else {
        Role::Customer
    }
}

pub fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Customer => pb::Role::Customer,
        Role::Admin => pb::Role::Admin,
    }
}

/// A user with the order figures the order events keep current.
#[derive(Debug, Clone)]
pub struct User {
    pub user_id: Uuid,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub stats: UserStats,
}

/// Confirmed, not cancelled orders: how many, and the spend in each currency.
#[derive(Debug, Clone, Default)]
pub struct UserStats {
    pub order_count: i64,
    pub lifetime_spend: Vec<Money>,
}

/// One page of users in id order; the token is empty on the last page.
#[derive(Debug)]
pub struct UserPage {
    pub users: Vec<User>,
    pub next_page_token: String,
}

/// A successful sign-in: the signed token, when it expires (Unix seconds), whose it is.
#[derive(Debug)]
pub struct SignedIn {
    pub access_token: String,
    pub expires_at: u64,
    pub user: User,
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        pb::User {
            user_id: user.user_id.to_string(),
            email: user.email,
            display_name: user.display_name,
            role: role_to_proto(user.role) as i32,
            create_time: Some(timestamp(user.created_at)),
            stats: Some(pb::UserStats {
                order_count: user.stats.order_count,
                lifetime_spend: user.stats.lifetime_spend,
            }),
        }
    }
}

impl From<UserPage> for pb::ListUsersResponse {
    fn from(page: UserPage) -> Self {
        pb::ListUsersResponse {
            users: page.users.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }
    }
}

impl From<SignedIn> for pb::LoginResponse {
    fn from(signed_in: SignedIn) -> Self {
        pb::LoginResponse {
            access_token: signed_in.access_token,
            token_type: "Bearer".into(),
            expire_time: Some(prost_types::Timestamp {
                seconds: i64::try_from(signed_in.expires_at).unwrap_or(i64::MAX),
                nanos: 0,
            }),
            user: Some(signed_in.user.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" Ada@Example.COM ").expect("valid").as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@ex..com",
            "ada@-x.com",
        ] {
            let err = Email::parse(bad).expect_err(bad);
            assert!(err.to_string().starts_with("invalid email"), "{bad}: {err}");
        }
    }

    #[test]
    fn passwords_count_characters() {
        assert!(Password::parse("short".into()).is_err());
        assert!(Password::parse("ééééééééééé".into()).is_err()); // 11 chars, 22 bytes
        assert!(Password::parse("correct horse".into()).is_ok());
        assert!(Password::parse("x".repeat(129)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("correct horse".into())),
            "Ok(Password([redacted]))"
        );
    }
}
