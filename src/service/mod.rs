//! Running as a service: readiness of the parts, and the HTTP endpoint operators scrape.

pub mod health;
pub mod http;
