//! ExportOrders: every order as CSV, newest first, streamed a page at a time, so
//! an export of any size holds one page in memory and a client that stops
//! reading stops the reads. Pages follow the order id (UUIDv7, so time order):
//! an order placed after the export started is newer than its first page and
//! is left out, and none is written twice.

use chrono::SecondsFormat;
use shop_platform::Shutdown;
use shop_proto::google::api::HttpBody;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::model::{Order, Status as OrderStatus};
use crate::store::Orders;

/// The answer's media type (the first message carries it).
pub const CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// The first row: the columns of every row after it.
pub const HEADER: &str =
    "order_id,user_id,status,currency_code,total_minor,lines,create_time,update_time\n";

/// Orders read, and sent as one message, at a time.
const PAGE_SIZE: i64 = 500;

pub type ExportStream = ReceiverStream<Result<HttpBody, Status>>;

/// Streams the orders in `status` (every order when None) until the last page,
/// the client leaving, a failed read (its status ends the stream) or shutdown.
pub fn export(orders: Orders, status: Option<OrderStatus>, shutdown: Shutdown) -> ExportStream {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let header = HttpBody {
            content_type: CONTENT_TYPE.into(),
            data: HEADER.as_bytes().to_vec(),
            extensions: Vec::new(),
        };
        if tx.send(Ok(header)).await.is_err() {
            return;
        }
        let mut before = None;
        loop {
            let page = tokio::select! {
                () = shutdown.wait() => {
                    let _ = tx.send(Err(Status::unavailable("server shutting down; export again"))).await;
                    return;
                }
                page = orders.list(None, status, PAGE_SIZE, before) => page,
            };
            let (page, more) = match page {
                Ok(page) => page,
                Err(err) => {
                    tracing::warn!(error = %err, "order export stopped by a failed read");
                    let _ = tx.send(Err(err.into())).await;
                    return;
                }
            };
            before = page.last().map(|o| o.row.order_id);
            let mut rows = String::with_capacity(page.len() * 160);
            for order in &page {
                push_row(&mut rows, order);
            }
            let chunk = HttpBody {
                content_type: String::new(),
                data: rows.into_bytes(),
                extensions: Vec::new(),
            };
            if tx.send(Ok(chunk)).await.is_err() || !more {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// One order as a CSV row. Every value is an id, an enum name, a number or a
/// time, none of which holds a comma, a quote or a line break, so no value
/// needs quoting; an order whose lines mix currencies has no total (two
/// empty cells), as in the API.
fn push_row(out: &mut String, order: &Order) {
    let total = order.total();
    let row = &order.row;
    let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
    out.push_str(&format!(
        "{},{},{},{},{},{},{},{}\n",
        row.order_id,
        row.user_id,
        order.status().to_proto().as_str_name(),
        total.as_ref().map_or("", |t| t.currency_code.as_str()),
        total
            .as_ref()
            .map_or(String::new(), |t| t.amount_minor.to_string()),
        order.lines.len(),
        time(&row.created_at),
        time(&row.updated_at),
    ));
}
