-- Every committed insert or update of an order NOTIFYs `order_changed` with its id,
-- so that WatchOrder streams learn of changes without polling (see src/watch.rs).
-- NOTIFY is transactional: a rolled-back change is never announced.
CREATE FUNCTION notify_order_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('order_changed', NEW.order_id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER orders_notify_changed
    AFTER INSERT OR UPDATE ON orders
    FOR EACH ROW EXECUTE FUNCTION notify_order_changed();
