//! HTTP on the API port: the front acceptor (request heads, firehose upgrades, forwarding),
//! tiny_http behind it, and the route table with its handlers.

mod account_info;
mod admin;
pub mod auth;
mod dash;
pub mod front;
pub mod head;
pub mod limits;
pub mod routes;
pub mod server;
pub mod siblings;
mod status;
mod sync;
