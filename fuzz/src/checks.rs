//! Each service's conversion from the wire message into its checked domain type:
//! any bytes that decode must be accepted or refused with an error, never panic.

use prost::Message;
use shop_proto::{inventory, order, user};

pub fn service_checks(rpc: &str, bytes: &[u8]) {
    match rpc {
        "Register" => {
            if let Ok(req) = user::RegisterRequest::decode(bytes) {
                let _ = shop_user::account::Registration::try_from(req);
            }
        }
        "Login" => {
            if let Ok(req) = user::LoginRequest::decode(bytes) {
                let _ = shop_user::account::LoginAttempt::try_from(req);
            }
        }
        "CreateProduct" => {
            if let Ok(req) = inventory::CreateProductRequest::decode(bytes) {
                let _ = shop_inventory::catalog::NewProduct::try_from(req);
            }
        }
        "AdjustStock" => {
            if let Ok(req) = inventory::AdjustStockRequest::decode(bytes) {
                let _ = shop_inventory::catalog::Adjustment::try_from(req);
            }
        }
        "ReserveStock" => {
            if let Ok(req) = inventory::ReserveStockRequest::decode(bytes) {
                let _ = shop_inventory::reservation::ReservationRequest::try_from(req);
            }
        }
        "CreateOrder" => {
            if let Ok(req) = order::CreateOrderRequest::decode(bytes) {
                let _ = shop_order::order::NewOrder::parse(req, Some("fuzz-key"));
            }
        }
        "GetOrder" | "CancelOrder" | "WatchOrder" => {
            if let Ok(req) = order::GetOrderRequest::decode(bytes) {
                let _ = shop_order::order::parse_order_id(&req.order_id);
            }
        }
        _ => {}
    }
}
