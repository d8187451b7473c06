//! The `/metrics` HTTP endpoint: HTTP/1.1 with hyper, one task per
//! connection, a bound on connections and on the time to send a request,
//! so that a stuck or hostile scraper cannot pile up resources.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Metrics, MetricsError};

/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed `accept` (e.g. out of file descriptors), so the
/// loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A bound metrics listener, not yet serving. Binding first lets the
/// caller report a bad address at start-up and learn the port of `:0`.
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `listen` (the `[metrics] listen` address).
    ///
    /// # Errors
    /// [`MetricsError::Bind`] when the address cannot be bound.
    pub async fn bind(listen: SocketAddr) -> Result<Self, MetricsError> {
        let bind_err = |source| MetricsError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(MetricsServer { listener, addr })
    }

    /// The address actually bound.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `metrics` until `shutdown` completes; then stops accepting
    /// and drops the connections still open.
    ///
    /// # Panics
    /// Never: the connection semaphore is never closed.
    pub async fn run(self, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) {
        tracing::info!(addr = %self.addr, "metrics endpoint listening");
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Reap finished connection tasks so the set stays small.
            while conns.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = Arc::clone(&permits).acquire_owned() => p.expect("semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                r = self.listener.accept() => match r {
                    Ok(s) => s,
                    Err(error) => {
                        tracing::warn!(%error, "metrics accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let metrics = Arc::clone(&metrics);
            conns.spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| respond(Arc::clone(&metrics), req));
                let result = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "metrics connection ended with an error");
                }
            });
        }
        conns.shutdown().await;
        tracing::info!(addr = %self.addr, "metrics endpoint stopped");
    }
}

/// Binds `listen` and serves `metrics` on `/metrics` until `shutdown`
/// completes. The daemon calls this only when `[metrics] listen` is set.
///
/// # Errors
/// [`MetricsError::Bind`] when the address cannot be bound.
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MetricsError> {
    MetricsServer::bind(listen)
        .await?
        .run(metrics, shutdown)
        .await;
    Ok(())
}

async fn respond(
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(route(&metrics, req.method(), req.uri().path()))
}

/// Only `GET`/`HEAD /metrics`; everything else is refused plainly.
fn route(metrics: &Metrics, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            CONTENT_TYPE,
            "text/plain; charset=utf-8".parse().expect("static header"),
        );
        r
    };
    if path != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, "GET, HEAD".parse().expect("static header"));
        return r;
    }
    let mut r = Response::new(Full::new(Bytes::from(metrics.render())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        super::CONTENT_TYPE.parse().expect("static header"),
    );
    r
}
