//! The gRPC surface: authorization per docs/design.md and conversion at the edge.

use shop_platform::ApiError;
use shop_platform::access_keys::{self, VerifyingKey};
use shop_platform::auth::{Authenticator, Role};
use shop_platform::client_address::{self, Networks};
use shop_platform::contract;
use shop_platform::pagination;
use shop_platform::rate_limit::SharedRateLimiter;
use shop_platform::revocation::Revocations;
use shop_platform::tls;
use shop_proto::user as pb;
use shop_proto::user::user_service_server::UserService;
use std::time::Duration;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::accounts::Accounts;
use crate::model::{self, LoginAttempt, Registration};
use crate::settings::MAX_ACCESS_TOKEN_TTL_SECS;

#[derive(Debug)]
pub struct UserApi {
    accounts: Accounts,
    auth: Authenticator,
    /// Peers whose `x-forwarded-for` names the client (the gateway).
    trusted_proxies: Networks,
    /// Registrations per client address, over every copy.
    registrations: SharedRateLimiter,
    /// The only service identity that may read any user.
    order_service: String,
    /// The keys that verify access tokens, as published (ListAccessTokenKeys).
    published_keys: pb::ListAccessTokenKeysResponse,
    /// How long the set may be cached: as long as a verifier keeps it by default.
    keys_cache_control: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl UserApi {
    pub fn new(
        accounts: Accounts,
        auth: Authenticator,
        trusted_proxies: Networks,
        registrations: SharedRateLimiter,
        order_service: String,
        published_keys: &[VerifyingKey],
    ) -> Self {
        Self {
            accounts,
            auth,
            trusted_proxies,
            registrations,
            order_service,
            published_keys: pb::ListAccessTokenKeysResponse {
                keys: published_keys.iter().map(access_keys::to_jwk).collect(),
            },
            keys_cache_control: format!("public, max-age={}", access_keys::DEFAULT_REFRESH_SECS)
                .parse()
                .expect("ASCII words and digits are a metadata value"),
        }
    }
}

impl UserApi {
    fn revocations(&self) -> Result<&Revocations, ApiError> {
        self.auth.revocations().map(AsRef::as_ref).ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("this service follows no revocations"))
        })
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    #[tracing::instrument(skip_all)]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        self.auth.caller(request.metadata())?;
        contract::check(request.get_ref())?;
        let client = client_address::of_call(&request, &self.trusted_proxies);
        if let Err(secs) = self
            .registrations
            .check(&client_address::bucket(client))
            .await
        {
            return Err(ApiError::Throttled {
                message: format!("too many registrations from your address; retry in {secs} s"),
                retry_after: std::time::Duration::from_secs(secs),
            }
            .into());
        }
        let registration = Registration::from(request.into_inner());
        let user = self
            .accounts
            .register(registration, Role::Customer, Some(client))
            .await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        contract::check(request.get_ref())?;
        let client = client_address::of_call(&request, &self.trusted_proxies);
        let attempt = LoginAttempt::from(request.into_inner());
        let signed_in = self.accounts.login(attempt, client).await?;
        Ok(Response::new(signed_in.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        let me = caller.require_user()?;
        contract::check(request.get_ref())?;
        self.revocations()?.revoke_token(&me.token).await?;
        tracing::info!(user_id = %me.user_id, "signed out: token revoked");
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(skip_all, fields(user_id))]
    async fn revoke_user_tokens(
        &self,
        request: Request<pb::RevokeUserTokensRequest>,
    ) -> Result<Response<pb::RevokeUserTokensResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        let admin = caller.require_admin()?;
        contract::check(request.get_ref())?;
        let user_id = model::parse_user_id(&request.get_ref().user_id)?;
        tracing::Span::current().record("user_id", tracing::field::display(user_id));
        // An unknown id is named as such rather than revoked in the void.
        self.accounts.get(user_id).await?;
        self.revocations()?
            .revoke_user(user_id, Duration::from_secs(MAX_ACCESS_TOKEN_TTL_SECS))
            .await?;
        tracing::info!(admin = %admin.user_id, "every token of the user revoked");
        Ok(Response::new(pb::RevokeUserTokensResponse {}))
    }

    #[tracing::instrument(skip_all, fields(user_id))]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        // Nobody signed in is refused before the request is read.
        if caller.service.is_none() {
            caller.require_user()?;
        }
        contract::check(request.get_ref())?;
        let user_id = model::parse_user_id(&request.get_ref().user_id)?;
        tracing::Span::current().record("user_id", tracing::field::display(user_id));
        if caller.service.is_some() {
            // Only the order service reads other users' accounts, by token and,
            // on a mutual-TLS port, by certificate.
            caller.require_service(&self.order_service)?;
            tls::require_peer(&request, &self.order_service)?;
        } else {
            let me = caller.require_user()?;
            if me.user_id != user_id && me.role != Role::Admin {
                return Err(ApiError::PermissionDenied(
                    "you may only read your own account".into(),
                )
                .into());
            }
        }
        let user = self.accounts.get(user_id).await?;
        Ok(Response::new(pb::GetUserResponse {
            user: Some(user.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        caller.require_admin()?;
        contract::check(request.get_ref())?;
        let req = request.into_inner();
        let page_size = pagination::page_size(req.page_size)?;
        let after = pagination::decode_token(&req.page_token)?
            .map(|k| Uuid::parse_str(&k))
            .transpose()
            .map_err(|_| ApiError::invalid("page_token", "is not a token this service issued"))?;
        let page = self.accounts.list(page_size, after).await?;
        Ok(Response::new(page.into()))
    }

    /// Open to anyone, token or not: these are public keys, and a verifier whose
    /// keys are stale must still be able to fetch fresh ones.
    #[tracing::instrument(skip_all)]
    async fn list_access_token_keys(
        &self,
        request: Request<pb::ListAccessTokenKeysRequest>,
    ) -> Result<Response<pb::ListAccessTokenKeysResponse>, Status> {
        contract::check(request.get_ref())?;
        let mut response = Response::new(self.published_keys.clone());
        response
            .metadata_mut()
            .insert("cache-control", self.keys_cache_control.clone());
        Ok(response)
    }
}
