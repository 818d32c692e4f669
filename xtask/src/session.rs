//! A customer's WebSocket session on a kiosk app (`fixtures/kiosk-app`), as tests and the demo
//! hold one on a pod of the real node: alive (echoes), closed by the client, or ended by the
//! server (a Close frame with its code, or a dropped connection when the app was killed).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// A WebSocket session on a kiosk app.
pub struct Session {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    pings: u64,
    /// How the server ended the session, when a ping saw it.
    closed: Option<Option<u16>>,
}

impl Session {
    /// Opens a WebSocket session at `url` (`ws://ADDR/ws`), as a customer's kiosk does; a
    /// refusal is reported (e.g. `HTTP 503` while draining).
    pub async fn open(url: &str) -> Result<Session, String> {
        let connect = tokio_tungstenite::connect_async(url);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok((ws, _))) => Ok(Session { ws, pings: 0, closed: None }),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                Err(format!("HTTP {}", resp.status().as_u16()))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no handshake within 10 s".to_owned()),
        }
    }

    /// Closes the session from the client side (1000) and waits for the close to complete.
    pub async fn close(mut self) {
        let frame = CloseFrame { code: CloseCode::Normal, reason: "".into() };
        let done = async {
            let _ = self.ws.close(Some(frame)).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        };
        tokio::time::timeout(Duration::from_secs(10), done).await.expect("the session did not close within 10 s");
    }

    /// Waits until the server ends the session: `Some(close code)`, or None when the connection
    /// dropped without a Close frame. Panics after `timeout`.
    pub async fn closed_by_server(&mut self, timeout: Duration) -> Option<u16> {
        if let Some(closed) = self.closed {
            return closed;
        }
        let ws = &mut self.ws;
        let ended = async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        // Reading on sends our Close answer and completes the handshake.
                        while let Some(Ok(_)) = ws.next().await {}
                        return Some(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                }
            }
        };
        let closed = tokio::time::timeout(timeout, ended)
            .await
            .unwrap_or_else(|_| panic!("the server did not end the session within {timeout:?}"));
        self.closed = Some(closed);
        closed
    }

    /// Sends a text and waits (up to 5 s) for its echo: whether the session is alive.
    pub async fn ping(&mut self) -> bool {
        if self.closed.is_some() {
            return false;
        }
        self.pings += 1;
        let text = format!("ping {}", self.pings);
        let ws = &mut self.ws;
        let echoed = async {
            ws.send(Message::text(text.clone())).await.map_err(|_| None)?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) if t.as_str() == text => return Ok(()),
                    Some(Ok(Message::Close(frame))) => {
                        while let Some(Ok(_)) = ws.next().await {}
                        return Err(Some(frame.map_or(1005, |f| u16::from(f.code))));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Err(None),
                }
            }
        };
        match tokio::time::timeout(Duration::from_secs(5), echoed).await {
            Ok(Ok(())) => true,
            Ok(Err(closed)) => {
                self.closed = Some(closed);
                false
            }
            Err(_) => false,
        }
    }
}
