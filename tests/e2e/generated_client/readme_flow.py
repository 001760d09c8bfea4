"""The README's REST flow through a client that openapi-python-client generated
from the gateway's /openapi.json, with no hand-written HTTP.

Usage: readme_flow.py GATEWAY_URL PACKAGE_DIR. PACKAGE_DIR holds the generated
package `shopmesh_client`. Exits non-zero, saying which step failed.
"""

import sys
import uuid


def main() -> None:
    gateway, package_dir = sys.argv[1], sys.argv[2]
    sys.path.insert(0, package_dir)
    from shopmesh_client import AuthenticatedClient, Client
    from shopmesh_client.api.inventory_service import (
        inventory_service_get_product as get_product,
        inventory_service_list_products as list_products,
    )
    from shopmesh_client.api.order_service import (
        order_service_cancel_order as cancel_order,
        order_service_create_order as create_order,
        order_service_get_order as get_order,
    )
    from shopmesh_client.api.user_service import (
        user_service_login as login,
        user_service_logout as logout,
        user_service_register as register,
    )
    from shopmesh_client.models import (
        ShopOrderV1CancelOrderRequest,
        ShopOrderV1CreateOrderLine,
        ShopOrderV1CreateOrderRequest,
        ShopUserV1LoginRequest,
        ShopUserV1LogoutRequest,
        ShopUserV1RegisterRequest,
    )

    anonymous = Client(base_url=gateway, raise_on_unexpected_status=True)
    product = get_product.sync(client=anonymous, sku="MUG-001")
    check(product.product.sku == "MUG-001", f"GetProduct: {product}")
    page = list_products.sync(client=anonymous, page_size=2)
    check(len(page.products) == 2, f"ListProducts pageSize=2: {page}")

    email = f"generated-{uuid.uuid4().hex}@example.com"
    password = "correct horse battery"
    registered = register.sync(
        client=anonymous, body=ShopUserV1RegisterRequest(email=email, password=password)
    )
    check(registered.user.email == email, f"Register: {registered}")
    signed_in = login.sync(
        client=anonymous, body=ShopUserV1LoginRequest(email=email, password=password)
    )
    check(bool(signed_in.access_token), f"Login: {signed_in}")

    customer = AuthenticatedClient(
        base_url=gateway, token=signed_in.access_token, raise_on_unexpected_status=True
    )
    order = create_order.sync(
        client=customer,
        body=ShopOrderV1CreateOrderRequest(
            lines=[ShopOrderV1CreateOrderLine(sku="MUG-001", quantity="1")],
            request_id=f"generated-{uuid.uuid4().hex}",
        ),
    ).order
    check(order.status.value == "ORDER_STATUS_CONFIRMED", f"CreateOrder: {order}")
    read = get_order.sync(client=customer, order_id=order.order_id).order
    check(read.order_id == order.order_id, f"GetOrder: {read}")
    cancelled = cancel_order.sync(
        client=customer,
        order_id=order.order_id,
        body=ShopOrderV1CancelOrderRequest(reason="changed my mind"),
    ).order
    check(cancelled.status.value == "ORDER_STATUS_CANCELLED", f"CancelOrder: {cancelled}")
    signed_out = logout.sync_detailed(client=customer, body=ShopUserV1LogoutRequest())
    check(signed_out.status_code == 204, f"Logout: {signed_out.status_code}")
    print("generated client: README flow passed")


def check(ok: bool, what: str) -> None:
    if not ok:
        sys.exit(f"generated client: {what}")


if __name__ == "__main__":
    main()
