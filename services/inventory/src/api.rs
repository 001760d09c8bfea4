//! The gRPC surface: who may call what (the authorization table in docs/design.md),
//! and conversion at the edge.

use shop_platform::ApiError;
use shop_platform::auth::Authenticator;
use shop_platform::contract;
use shop_platform::pagination;
use shop_platform::tls;
use shop_proto::inventory as pb;
use shop_proto::inventory::inventory_service_server::InventoryService;
use tonic::{Request, Response, Status};

use crate::model::{Adjustment, NewProduct, ProductUpdate, ReservationRequest, parse_order_id};
use crate::store::{Catalog, Reservations};

/// The most products one ImportProducts call may carry: one transaction holds
/// them all, and a client with more sends several imports.
pub const MAX_IMPORT: usize = 1000;

#[derive(Debug)]
pub struct InventoryApi {
    catalog: Catalog,
    reservations: Reservations,
    auth: Authenticator,
    /// The only service identity that may call the internal RPCs.
    order_service: String,
}

impl InventoryApi {
    pub fn new(
        catalog: Catalog,
        reservations: Reservations,
        auth: Authenticator,
        order_service: String,
    ) -> Self {
        Self {
            catalog,
            reservations,
            auth,
            order_service,
        }
    }

    fn internal<T>(&self, request: &Request<T>) -> Result<(), ApiError> {
        // On a mutual-TLS port the certificate says which workload calls.
        tls::require_peer(request, &self.order_service)?;
        let caller = self.auth.caller(request.metadata())?;
        caller.require_service(&self.order_service)?;
        if let Some(user) = &caller.user {
            tracing::debug!(user_id = %user.user_id, "on behalf of");
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    #[tracing::instrument(skip_all)]
    async fn create_product(
        &self,
        request: Request<pb::CreateProductRequest>,
    ) -> Result<Response<pb::CreateProductResponse>, Status> {
        self.auth.caller(request.metadata())?.require_admin()?;
        contract::check(request.get_ref())?;
        let product = NewProduct::try_from(request.into_inner())?;
        let product = self.catalog.create(product).await?;
        Ok(Response::new(pb::CreateProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_product(
        &self,
        request: Request<pb::UpdateProductRequest>,
    ) -> Result<Response<pb::UpdateProductResponse>, Status> {
        self.auth.caller(request.metadata())?.require_admin()?;
        contract::check(request.get_ref())?;
        let update = ProductUpdate::try_from(request.into_inner())?;
        let product = self.catalog.update(update).await?;
        Ok(Response::new(pb::UpdateProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_product(
        &self,
        request: Request<pb::GetProductRequest>,
    ) -> Result<Response<pb::GetProductResponse>, Status> {
        self.auth.caller(request.metadata())?;
        contract::check(request.get_ref())?;
        let sku = request.get_ref().sku.clone();
        let product = self.catalog.get(&sku).await?;
        Ok(Response::new(pb::GetProductResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_products(
        &self,
        request: Request<pb::ListProductsRequest>,
    ) -> Result<Response<pb::ListProductsResponse>, Status> {
        self.auth.caller(request.metadata())?;
        contract::check(request.get_ref())?;
        let req = request.into_inner();
        let page_size = pagination::page_size(req.page_size)?;
        let after = pagination::decode_token(&req.page_token)?;
        let page = self.catalog.list(page_size, after).await?;
        Ok(Response::new(page.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn import_products(
        &self,
        request: Request<tonic::Streaming<pb::ImportProductsRequest>>,
    ) -> Result<Response<pb::ImportProductsResponse>, Status> {
        self.auth.caller(request.metadata())?.require_admin()?;
        let mut stream = request.into_inner();
        let mut products: Vec<NewProduct> = Vec::new();
        // A field is named by its message's place in the stream and its path in
        // the message (`[2].product.sku`), as the gateway names an NDJSON line's.
        while let Some(message) = stream.message().await? {
            let index = products.len();
            if index == MAX_IMPORT {
                let limit = format!("at most {MAX_IMPORT} products per import");
                return Err(ApiError::invalid(format!("[{index}]"), limit).into());
            }
            let at = format!("[{index}].product");
            let product = message
                .product
                .ok_or_else(|| ApiError::invalid(&at, "is required"))?;
            contract::check(&product).map_err(|e| e.within(&at))?;
            let product = NewProduct::try_from(product).map_err(|e| e.within(&at))?;
            if let Some(first) = products.iter().position(|p| p.sku == product.sku) {
                let repeat = format!("repeats [{first}].product.sku");
                return Err(ApiError::invalid(format!("{at}.sku"), repeat).into());
            }
            products.push(product);
        }
        let imported = self.catalog.import(products).await?;
        Ok(Response::new(pb::ImportProductsResponse {
            created_skus: imported.created,
            existing_skus: imported.existing,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        self.auth.caller(request.metadata())?.require_admin()?;
        contract::check(request.get_ref())?;
        let adjustment = Adjustment::from(request.into_inner());
        let product = self.catalog.adjust(adjustment).await?;
        Ok(Response::new(pb::AdjustStockResponse {
            product: Some(product.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        contract::check(request.get_ref())?;
        self.internal(&request)?;
        let reservation = ReservationRequest::try_from(request.into_inner())?;
        let reservation = self.reservations.reserve(reservation).await?;
        Ok(Response::new(pb::ReserveStockResponse {
            reservation: Some(reservation.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationResponse>, Status> {
        contract::check(request.get_ref())?;
        self.internal(&request)?;
        let order_id = parse_order_id(&request.get_ref().order_id)?;
        let reservation = self.reservations.release(&order_id).await?;
        Ok(Response::new(pb::ReleaseReservationResponse {
            reservation: Some(reservation.into()),
        }))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn commit_reservation(
        &self,
        request: Request<pb::CommitReservationRequest>,
    ) -> Result<Response<pb::CommitReservationResponse>, Status> {
        contract::check(request.get_ref())?;
        self.internal(&request)?;
        let order_id = parse_order_id(&request.get_ref().order_id)?;
        let reservation = self.reservations.commit(&order_id).await?;
        Ok(Response::new(pb::CommitReservationResponse {
            reservation: Some(reservation.into()),
        }))
    }
}
