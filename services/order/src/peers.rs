//! Calls to the inventory service: each with a deadline (the smaller of
//! the per-call timeout and what is left of the caller's), the trace context, this
//! service's identity token and the end user's token for audit; only idempotent
//! calls are retried, a bounded number of times.

use std::time::Duration;

use shop_platform::auth::SERVICE_AUTHORIZATION;
use shop_platform::auth::TokenSigner;
use shop_platform::grpc::{self, Deadline, RetryBudget, RetryPolicy};
use shop_platform::tls::TlsFiles;
use shop_proto::inventory as inv;
use shop_proto::inventory::inventory_service_client::InventoryServiceClient;
use std::sync::Arc;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// How long a call to a peer may go unanswered before it is also sent to another
/// copy (a few times the usual answer time, well under the saga's deadline).
const HEDGE_AFTER: Duration = Duration::from_millis(150);

#[derive(Clone)]
pub struct Peers {
    inventory: InventoryServiceClient<Channel>,
    signer: TokenSigner,
    identity: String,
    rpc_timeout: Duration,
    /// Retries of calls to inventory, as a share of the calls.
    retries: Arc<RetryBudget>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// The end user a call is made for, to pass along.
#[derive(Clone, Debug, Default)]
pub struct OnBehalfOf(pub Option<AsciiMetadataValue>);

impl Peers {
    pub async fn connect(
        inventory_addr: &str,
        signer: TokenSigner,
        identity: &str,
        rpc_timeout: Duration,
        resolve_every: Duration,
        tls: Option<&TlsFiles>,
    ) -> anyhow::Result<Self> {
        let connect_timeout = rpc_timeout.min(Duration::from_secs(1));
        let channel =
            grpc::channel_every(inventory_addr, connect_timeout, resolve_every, tls).await?;
        Ok(Self {
            inventory: InventoryServiceClient::new(channel),
            signer,
            identity: identity.into(),
            rpc_timeout,
            retries: Arc::new(RetryBudget::new()),
        })
    }

    fn request<M>(
        &self,
        message: M,
        user: &OnBehalfOf,
        deadline: &Deadline,
    ) -> Result<Request<M>, Status> {
        let timeout = self.rpc_timeout.min(deadline.remaining()?);
        let mut request = grpc::outgoing(message, timeout);
        let token = self.signer.service_token(&self.identity)?;
        let value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| Status::internal("service token is not ASCII"))?;
        request.metadata_mut().insert(SERVICE_AUTHORIZATION, value);
        if let Some(auth) = &user.0 {
            request.metadata_mut().insert("authorization", auth.clone());
        }
        Ok(request)
    }

    fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            // The first attempt, hedges, and a retry when an ejected copy's call is
            // cancelled: all within the retry budget.
            max_attempts: 4,
            first_backoff: Duration::from_millis(50),
            attempt_timeout: self.rpc_timeout,
            // A peer copy that froze mid-call costs this, not the call's deadline.
            hedge_after: Some(HEDGE_AFTER),
            ..RetryPolicy::default()
        }
    }

    /// An idempotent call on `client`, retried per `policy` with a fresh request each time.
    async fn idempotent<C, Req, Resp, Fut>(
        &self,
        client: &C,
        message: Req,
        user: &OnBehalfOf,
        deadline: &Deadline,
        call: impl Fn(C, Request<Req>) -> Fut,
    ) -> Result<Resp, Status>
    where
        C: Clone,
        Req: Clone,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        grpc::call_idempotent(
            self.policy(),
            &self.retries,
            || self.request(message.clone(), user, deadline),
            |req| call(client.clone(), req),
        )
        .await
        .map(tonic::Response::into_inner)
    }

    /// Idempotent per order id, so retried.
    pub async fn reserve(
        &self,
        order_id: &str,
        lines: &[(String, i64)],
        user: &OnBehalfOf,
        deadline: &Deadline,
    ) -> Result<inv::Reservation, Status> {
        let message = inv::ReserveStockRequest {
            order_id: order_id.into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| inv::ReservationLine {
                    sku: sku.clone(),
                    quantity: *quantity,
                    unit_price: None,
                })
                .collect(),
        };
        self.idempotent(
            &self.inventory,
            message,
            user,
            deadline,
            |mut c, r| async move { c.reserve_stock(r).await },
        )
        .await?
        .reservation
        .ok_or_else(|| Status::internal("inventory answered without a reservation"))
    }

    /// Idempotent, so retried.
    pub async fn commit(
        &self,
        order_id: &str,
        deadline: &Deadline,
    ) -> Result<inv::Reservation, Status> {
        let message = inv::CommitReservationRequest {
            order_id: order_id.into(),
        };
        self.idempotent(
            &self.inventory,
            message,
            &OnBehalfOf::default(),
            deadline,
            |mut c, r| async move { c.commit_reservation(r).await },
        )
        .await?
        .reservation
        .ok_or_else(|| Status::internal("inventory answered without a reservation"))
    }

    /// Idempotent, so retried.
    pub async fn release(
        &self,
        order_id: &str,
        deadline: &Deadline,
    ) -> Result<inv::Reservation, Status> {
        let message = inv::ReleaseReservationRequest {
            order_id: order_id.into(),
        };
        self.idempotent(
            &self.inventory,
            message,
            &OnBehalfOf::default(),
            deadline,
            |mut c, r| async move { c.release_reservation(r).await },
        )
        .await?
        .reservation
        .ok_or_else(|| Status::internal("inventory answered without a reservation"))
    }
}
