//! Generated code for the shopmesh contracts and the descriptor set that
//! reflection and the gateway read.

#![allow(missing_debug_implementations, clippy::all, clippy::pedantic)]

/// The encoded `FileDescriptorSet` of every shopmesh proto and its imports, with
/// custom options (google.api.http) intact.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/shop_descriptor.bin"));

/// The buf.validate rules the contracts declare (the subset in proto/buf/validate).
pub mod buf {
    pub mod validate {
        tonic::include_proto!("buf.validate");
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

pub mod shop {
    /// Options the gateway reads from the descriptors (`shop.api.v1.http_response`).
    pub mod api {
        pub mod v1 {
            tonic::include_proto!("shop.api.v1");
        }
    }
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("shop.common.v1");
        }
    }
    pub mod user {
        pub mod v1 {
            tonic::include_proto!("shop.user.v1");
            include!(concat!(env!("OUT_DIR"), "/shop.user.v1.topic.rs"));
        }
    }
    pub mod inventory {
        pub mod v1 {
            tonic::include_proto!("shop.inventory.v1");
            include!(concat!(env!("OUT_DIR"), "/shop.inventory.v1.topic.rs"));
        }
    }
    pub mod order {
        pub mod v1 {
            tonic::include_proto!("shop.order.v1");
            include!(concat!(env!("OUT_DIR"), "/shop.order.v1.topic.rs"));
        }
    }
}

pub use shop::common::v1 as common;
pub use shop::inventory::v1 as inventory;
pub use shop::order::v1 as order;
pub use shop::user::v1 as user;
