//! The user service: accounts, sign-in with signed access tokens, and each user's
//! order figures kept current from order events.

pub mod accounts;
pub mod api;
pub mod application;
pub mod credentials;
pub mod events;
pub mod model;
pub mod settings;
pub mod sign_in_throttle;
pub mod store;

pub use application::{Application, SERVICE_NAME};
pub use settings::Settings;
