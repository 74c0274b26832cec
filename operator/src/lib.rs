//! Genesis Mesh operator: controllers, identity service, webhook (see the operator issue). Not built yet.
#![forbid(unsafe_code)]
