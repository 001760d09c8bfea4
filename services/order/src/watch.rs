//! WatchOrder: the order now, then on every change, until a final state, the
//! client leaving, or shutdown.

use std::time::Duration;

use shop_platform::Shutdown;
use shop_proto::order as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use uuid::Uuid;

use crate::orders::Orders;

const POLL: Duration = Duration::from_millis(200);

pub type WatchStream = ReceiverStream<Result<pb::WatchOrderResponse, Status>>;

pub fn watch(orders: Orders, order_id: Uuid, shutdown: Shutdown) -> WatchStream {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            match orders.version(order_id).await {
                Ok(Some(version)) if last.as_ref() != Some(&version) => {
                    let order = match orders.get(order_id).await {
                        Ok(Some(order)) => order,
                        Ok(None) => break,
                        Err(err) => {
                            let _ = tx.send(Err(err.into())).await;
                            break;
                        }
                    };
                    let done = order.status().is_final();
                    let message = pb::WatchOrderResponse {
                        order: Some(order.to_proto()),
                    };
                    if tx.send(Ok(message)).await.is_err() || done {
                        break;
                    }
                    last = Some(version);
                }
                Ok(_) => {}
                Err(err) => {
                    let _ = tx.send(Err(err.into())).await;
                    break;
                }
            }
            tokio::select! {
                _ = tx.closed() => break,
                _ = shutdown.wait() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down; watch again"))).await;
                    break;
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    ReceiverStream::new(rx)
}
