//! Turning a growing answer into chat messages: where to split ([`split`]) and when to send
//! and edit ([`stream`]).

pub mod split;
pub mod stream;
