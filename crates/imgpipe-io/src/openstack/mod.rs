//! OpenStack API clients: Keystone for a token and the service catalog, Glance for an image's
//! record and its data, Barbican for the certificate that signed an image.
//!
//! - [`keystone`]: password authentication (`POST /v3/auth/tokens`) and endpoint lookup in the
//!   token's [`Catalog`](keystone::Catalog).
//! - [`glance`]: the image record (`GET /v2/images/{id}`) and an
//!   [`HttpSource`](crate::HttpSource) for its data; can start from Keystone credentials.
//! - [`barbican`]: a signing certificate by its secret UUID.
//!
//! Dependencies go one way: `glance` uses `keystone`; both, and `barbican`, use the private
//! `rest` module for what every client shares (endpoint URL checks, size-capped body reads).
//! No client imports a client that imports it back.

pub mod barbican;
pub mod glance;
pub mod keystone;
mod rest;
