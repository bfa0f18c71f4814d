//! The API client's request metrics, as every Kubernetes component built on client-go has
//! them: `rest_client_requests_total{code,host,method}` and
//! `rest_client_request_duration_seconds{host,verb}` — a layer around kube-client's HTTP
//! service that times each request until its response headers arrive (a watch's stream is
//! not part of it, as in client-go).

use crate::metrics::Metrics;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Wraps a service so that [`Metrics::rest_request`] sees every request.
#[derive(Clone)]
pub struct RequestMetrics(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for RequestMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Measured<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.method().as_str().to_string();
        let host = request
            .uri()
            .authority()
            .map_or(String::new(), |a| a.to_string());
        let (metrics, start) = (self.metrics.clone(), Instant::now());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answer = answer.await;
            // client-go's code for a request that got no response.
            let code = match &answer {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "<error>".to_string(),
            };
            let seconds = start.elapsed().as_secs_f64();
            metrics.rest_request(&code, &method, &host, seconds);
            answer
        })
    }
}
