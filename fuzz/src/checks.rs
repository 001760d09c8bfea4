//! Each service's conversion from the wire message into its checked domain type:
//! any bytes that decode must be accepted or refused with an error, never panic.

use prost::Message;
use shop_proto::{inventory, order, user};

/// Decodes `bytes` as `M` and, when that works, puts it through `convert`.
fn decode_then<M: Message + Default, R>(bytes: &[u8], convert: impl FnOnce(M) -> R) {
    if let Ok(message) = M::decode(bytes) {
        let _ = convert(message);
    }
}

pub fn service_checks(rpc: &str, bytes: &[u8]) {
    match rpc {
        "Register" => decode_then::<user::RegisterRequest, _>(
            bytes,
            shop_user::account::Registration::try_from,
        ),
        "Login" => {
            decode_then::<user::LoginRequest, _>(bytes, shop_user::account::LoginAttempt::try_from)
        }
        "CreateProduct" => decode_then::<inventory::CreateProductRequest, _>(
            bytes,
            shop_inventory::catalog::NewProduct::try_from,
        ),
        "AdjustStock" => decode_then::<inventory::AdjustStockRequest, _>(
            bytes,
            shop_inventory::catalog::Adjustment::try_from,
        ),
        "ReserveStock" => decode_then::<inventory::ReserveStockRequest, _>(
            bytes,
            shop_inventory::reservation::ReservationRequest::try_from,
        ),
        "CreateOrder" => decode_then(bytes, |req: order::CreateOrderRequest| {
            shop_order::order::NewOrder::parse(req, Some("fuzz-key"))
        }),
        "GetOrder" | "CancelOrder" | "WatchOrder" => {
            decode_then(bytes, |req: order::GetOrderRequest| {
                shop_order::order::parse_order_id(&req.order_id)
            })
        }
        _ => {}
    }
}
