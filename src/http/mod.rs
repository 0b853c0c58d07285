//! HTTP on the API port (front acceptor + tiny_http) and the metrics port.

pub mod api;
pub mod auth;
pub mod front;
