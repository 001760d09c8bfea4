-- Every committed change to a product notifies `product_changed` with its SKU, so
-- each copy of the service can drop the product from its cache (store/product_cache.rs).
-- A trigger rather than application code: a change from any path, any copy or a
-- hand-typed UPDATE is announced alike. PostgreSQL delivers notifications only at
-- commit, and folds a transaction's identical ones into one.
CREATE FUNCTION notify_product_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('product_changed', OLD.sku);
    ELSE
        PERFORM pg_notify('product_changed', NEW.sku);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER product_changed
    AFTER INSERT OR UPDATE OR DELETE ON products
    FOR EACH ROW EXECUTE FUNCTION notify_product_changed();
