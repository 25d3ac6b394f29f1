//! A `kube::Client` that calls the API server in-process: requests go straight to
//! [`ApiServer::handle`] as a tower service, with no TLS and no socket, under the
//! identity of the component that uses it (as kube-controller-manager and
//! kube-scheduler have their own). Watches stream through the same path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::apiserver::ApiServer;
use super::apiserver::request::Resp;
use super::auth::User;

/// The tower service behind the in-process client.
#[derive(Clone)]
pub struct InProcess {
    api: Arc<ApiServer>,
    user: Arc<User>,
}

impl tower::Service<http::Request<kube::client::Body>> for InProcess {
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<kube::client::Body>) -> Self::Future {
        // The component's name is its field manager, as kube-controller-manager's is.
        let ua = format!("{}/rk", self.user.name.trim_start_matches("system:"));
        if let Ok(v) = http::HeaderValue::from_str(&ua) {
            req.headers_mut().entry(http::header::USER_AGENT).or_insert(v);
        }
        let (api, user) = (self.api.clone(), self.user.clone());
        Box::pin(async move { Ok(api.handle(req, Some(&user)).await) })
    }
}

/// A client for the component `name` (a user such as `system:kube-scheduler`).
pub fn in_process(api: Arc<ApiServer>, name: &str, groups: &[&str]) -> kube::Client {
    let user = User::new(name, groups);
    kube::Client::new(InProcess { api, user: Arc::new(user) }, "default")
}
