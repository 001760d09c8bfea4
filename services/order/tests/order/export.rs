//! ExportOrders: every order as CSV for an admin, streamed, and for nobody else.

use futures::StreamExt as _;
use shop_proto::order as pb;
use shop_testkit::bearer;
use tonic::{Code, Request};

use crate::mesh::Mesh;

/// The export as `token` sees it: the first message's content type and the
/// whole text.
async fn export(
    mesh: &Mesh,
    token: &str,
    status: pb::OrderStatus,
) -> Result<(String, String), tonic::Status> {
    let mut request = Request::new(pb::ExportOrdersRequest {
        status: status as i32,
    });
    bearer(&mut request, "authorization", token);
    let mut stream = mesh
        .orders()
        .await
        .export_orders(request)
        .await?
        .into_inner();
    let mut content_type = None;
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        content_type.get_or_insert(chunk.content_type);
        text.extend(chunk.data);
    }
    Ok((
        content_type.unwrap_or_default(),
        String::from_utf8(text).expect("UTF-8"),
    ))
}

#[tokio::test]
async fn an_admin_exports_every_order_as_csv_and_nobody_else_may() {
    let mesh = Mesh::start().await;
    // Three customers' orders; the first is the oldest.
    let (token, kept) = mesh.confirmed_order("CSV").await;
    for _ in 0..2 {
        mesh.confirmed_order("CSV").await;
    }
    let admin = mesh.identity.admin_token();

    let (content_type, csv) = export(&mesh, &admin, pb::OrderStatus::Unspecified)
        .await
        .expect("admin export");
    assert_eq!(content_type, "text/csv; charset=utf-8");
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("order_id,user_id,status,currency_code,total_minor,lines,create_time,update_time")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3, "{csv}");
    assert!(rows.iter().all(|r| r.len() == 8), "{csv}");
    // Newest first, as ListOrders.
    let row = rows.last().expect("oldest row");
    assert_eq!(row[0], kept.order_id);
    assert_eq!(
        (row[1], row[2], row[5]),
        (kept.user_id.as_str(), "ORDER_STATUS_CONFIRMED", "1")
    );
    let total = kept.total.as_ref().expect("total");
    assert_eq!(
        (row[3], row[4]),
        (
            total.currency_code.as_str(),
            &*total.amount_minor.to_string()
        )
    );

    // A status narrows it.
    mesh.cancel(&token, &kept.order_id).await.expect("cancel");
    let (_, csv) = export(&mesh, &admin, pb::OrderStatus::Cancelled)
        .await
        .expect("cancelled only");
    let ids: Vec<&str> = csv.lines().skip(1).map(|l| &l[..36]).collect();
    assert_eq!(ids, [kept.order_id.as_str()]);

    // A customer, even one with orders, may not; nor may anyone unsigned.
    let err = export(&mesh, &token, pb::OrderStatus::Unspecified)
        .await
        .expect_err("customer");
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut anonymous = Request::new(pb::ExportOrdersRequest { status: 0 });
    anonymous.metadata_mut().remove("authorization");
    let err = mesh
        .orders()
        .await
        .export_orders(anonymous)
        .await
        .expect_err("anonymous");
    assert_eq!(err.code(), Code::Unauthenticated);
}
