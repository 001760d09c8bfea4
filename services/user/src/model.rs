//! Accounts as the service sees them: checked registration and sign-in input,
//! roles, the users the store returns, and their wire forms.

use chrono::{DateTime, Utc};
use shop_platform::ApiError;
use shop_platform::auth::Role;
use shop_platform::pagination::timestamp;
use shop_proto::common::Money;
use shop_proto::user as pb;
use uuid::Uuid;

// The requests below have passed `contract::check` (their rules, lengths and
// the email syntax included, are in user_service.proto): what is left here is
// what a rule cannot say.

/// An email address as accounts are keyed: lower-cased, so that one address is
/// one account however it is typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn new(checked: &str) -> Self {
        Self(checked.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that met the contract's length policy; never printed.
#[derive(Clone)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

impl Password {
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

impl From<pb::RegisterRequest> for Registration {
    fn from(req: pb::RegisterRequest) -> Self {
        Self {
            email: Email::new(&req.email),
            password: Password(req.password),
            display_name: req.display_name.trim().to_owned(),
        }
    }
}

/// A checked Login request. The password is not held to the registration
/// policy: a wrong one fails the same way whatever its length.
#[derive(Debug)]
pub struct LoginAttempt {
    pub email: String,
    pub password: String,
}

impl From<pb::LoginRequest> for LoginAttempt {
    fn from(req: pb::LoginRequest) -> Self {
        Self {
            email: Email::new(&req.email).0,
            password: req.password,
        }
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
    use shop_platform::contract;

    fn register(email: &str, password: &str) -> pb::RegisterRequest {
        pb::RegisterRequest {
            email: email.into(),
            password: password.into(),
            display_name: " Ada ".into(),
        }
    }

    #[test]
    fn one_address_is_one_account() {
        let req = register("Ada@Example.COM", "correct horse");
        contract::check(&req).expect("valid");
        let registration = Registration::from(req);
        assert_eq!(registration.email.as_str(), "ada@example.com");
        assert_eq!(registration.display_name, "Ada");
        let login = LoginAttempt::from(pb::LoginRequest {
            email: "ADA@example.com".into(),
            password: "whatever".into(),
        });
        assert_eq!(login.email, "ada@example.com");
    }

    #[test]
    fn the_contract_refuses_bad_emails_and_passwords() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a da@example.com",
            "ada@ex..com",
            "ada@-x.com",
        ] {
            let err = contract::check(&register(bad, "correct horse")).expect_err(bad);
            assert!(err.to_string().starts_with("invalid email"), "{bad}: {err}");
        }
        // 11 characters in 22 bytes: lengths count characters.
        for bad in ["short", "ééééééééééé", &"x".repeat(129)] {
            let err = contract::check(&register("ada@example.com", bad)).expect_err(bad);
            assert!(
                err.to_string().starts_with("invalid password"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            format!(
                "{:?}",
                Registration::from(register("a@b.c", "correct horse")).password
            ),
            "Password([redacted])"
        );
    }
}
