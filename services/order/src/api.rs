//! The gRPC surface: who may see and change which orders, conversion at the edge.

use shop_platform::ApiError;
use shop_platform::Shutdown;
use shop_platform::auth::{Authenticator, Caller, UserPrincipal};
use shop_platform::contract;
use shop_platform::grpc::Deadline;
use shop_platform::pagination;
use shop_proto::order as pb;
use shop_proto::order::order_service_server::OrderService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::checkout::Checkout;
use crate::export::{self, ExportStream};
use crate::model::{NewOrder, Order, Status as OrderStatus, parse_order_id};
use crate::peers::OnBehalfOf;
use crate::store::Orders;
use crate::watch::{WatchStream, Watches};

#[derive(Debug)]
pub struct OrderApi {
    orders: Orders,
    checkout: Checkout,
    watches: Watches,
    auth: Authenticator,
    request_deadline: std::time::Duration,
    /// Fired when the service stops, to end watch streams.
    shutdown: Shutdown,
}

impl OrderApi {
    pub fn new(
        orders: Orders,
        checkout: Checkout,
        watches: Watches,
        auth: Authenticator,
        request_deadline: std::time::Duration,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            orders,
            checkout,
            watches,
            auth,
            request_deadline,
            shutdown,
        }
    }

    /// The order, if the caller owns it or is an admin.
    async fn visible_order(&self, caller: &Caller, raw_id: &str) -> Result<Order, ApiError> {
        let me = caller.require_user()?;
        let order_id = parse_order_id(raw_id)?;
        let order = self.orders.require(order_id).await?;
        check_owner(me, &order)?;
        Ok(order)
    }
}

fn check_owner(me: &UserPrincipal, order: &Order) -> Result<(), ApiError> {
    if order.row.user_id == me.user_id || me.role == shop_platform::auth::Role::Admin {
        Ok(())
    } else {
        Err(ApiError::PermissionDenied(format!(
            "order {} belongs to another user",
            order.row.order_id
        )))
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all, fields(order_id))]
    async fn create_order(
        &self,
        request: Request<pb::CreateOrderRequest>,
    ) -> Result<Response<pb::CreateOrderResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        let me = caller.require_user()?.clone();
        contract::check(request.get_ref())?;
        let deadline = Deadline::from_metadata(request.metadata(), self.request_deadline);
        let on_behalf = OnBehalfOf(request.metadata().get("authorization").cloned());
        let idempotency_key = request
            .metadata()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let new = NewOrder::parse(request.into_inner(), idempotency_key.as_deref())?;
        let order = self.checkout.create(&me, on_behalf, new, deadline).await?;
        tracing::Span::current().record("order_id", tracing::field::display(order.row.order_id));
        Ok(Response::new(pb::CreateOrderResponse {
            order: Some(order.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        caller.require_user()?;
        contract::check(request.get_ref())?;
        let order = self
            .visible_order(&caller, &request.get_ref().order_id)
            .await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order.to_proto()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        let me = caller.require_user()?;
        contract::check(request.get_ref())?;
        let req = request.into_inner();
        let page_size = pagination::page_size(req.page_size)?;
        let status = OrderStatus::from_proto(req.status)?;
        let before = pagination::decode_token(&req.page_token)?
            .map(|k| Uuid::parse_str(&k))
            .transpose()
            .map_err(|_| ApiError::invalid("page_token", "is not a token this service issued"))?;
        let owner = (!caller.is_admin()).then_some(me.user_id);
        let (orders, more) = self.orders.list(owner, status, page_size, before).await?;
        let next_page_token = match (more, orders.last()) {
            (true, Some(last)) => pagination::encode_token(&last.row.order_id.to_string()),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: orders.iter().map(Order::to_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        caller.require_user()?;
        contract::check(request.get_ref())?;
        let order = self
            .visible_order(&caller, &request.get_ref().order_id)
            .await?;
        let reason = request.get_ref().reason.trim();
        let reason = if reason.is_empty() {
            "cancelled by request"
        } else {
            reason
        };
        let order = self.orders.cancel(order.row.order_id, reason).await?;
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order.to_proto()),
        }))
    }

    type WatchOrderStream = WatchStream;
    type ExportOrdersStream = ExportStream;

    #[tracing::instrument(skip_all)]
    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let caller = self.auth.caller(request.metadata())?;
        let me = caller.require_user()?;
        contract::check(request.get_ref())?;
        let order = self
            .visible_order(&caller, &request.get_ref().order_id)
            .await?;
        let stream = self
            .watches
            .watch(me.user_id, order.row.order_id, self.shutdown.clone())
            .await?;
        Ok(Response::new(stream))
    }

    #[tracing::instrument(skip_all)]
    async fn export_orders(
        &self,
        request: Request<pb::ExportOrdersRequest>,
    ) -> Result<Response<Self::ExportOrdersStream>, Status> {
        self.auth.caller(request.metadata())?.require_admin()?;
        contract::check(request.get_ref())?;
        let status = OrderStatus::from_proto(request.get_ref().status)?;
        Ok(Response::new(export::export(
            self.orders.clone(),
            status,
            self.shutdown.clone(),
        )))
    }
}
