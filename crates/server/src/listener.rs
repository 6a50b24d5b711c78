//! The API listener: one TCP port for the ECS/ECR APIs, the agent protocol and the registry,
//! speaking plain HTTP and, when TLS is configured, HTTPS too; the first byte a client sends
//! tells which (a TLS handshake record starts with 0x16, no HTTP method does).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The first byte of a TLS ClientHello record.
const TLS_HANDSHAKE: u8 = 0x16;
/// A client that sends nothing (or no complete handshake) for this long is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Idle keep-alive connections get this long to send their next request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `app` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let builder = {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT);
                builder
            };
            let Some(acceptor) = acceptor else {
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                let _ = watcher.watch(connection).await;
                return;
            };
            // Peek, not read: plain HTTP must still see the byte.
            let peeked = tokio::select! {
                result = tokio::time::timeout(HANDSHAKE_TIMEOUT, peek_is_tls(&stream)) => result,
                () = shutdown.cancelled() => return,
            };
            match peeked {
                Ok(true) => {
                    let accepted = tokio::select! {
                        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => result,
                        () = shutdown.cancelled() => return,
                    };
                    match accepted {
                        Ok(Ok(tls_stream)) => {
                            let connection =
                                builder.serve_connection(TokioIo::new(tls_stream), service);
                            let _ = watcher.watch(connection).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                Ok(false) => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                }
                Err(_) => tracing::debug!("client sent nothing; dropped"),
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open {}s after shutdown; closing them", SHUTDOWN_GRACE.as_secs());
        }
    }
}

/// Whether the client's first byte opens a TLS handshake (false on EOF or error: the HTTP
/// path then reads the same nothing and closes).
async fn peek_is_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == TLS_HANDSHAKE)
}
