//! The HTTP/JSON edge of shopmesh. Routes come from the `google.api.http`
//! annotations in the compiled descriptor set, not from hand-written handlers:
//! an annotated RPC added to a .proto appears on REST and in /openapi.json.

pub mod application;
pub mod conditional;
pub mod contract_schema;
pub mod errors;
pub mod forward;
pub mod grpc_edge;
pub mod layers;
pub mod openapi;
pub mod passthrough;
pub mod routes;
pub mod settings;
pub mod state;
pub mod success;
pub mod transcode;

pub use application::Application;
pub use settings::Settings;
