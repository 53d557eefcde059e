-- Stored events are facts: no role may update or delete them, or empty the tables.
CREATE OR REPLACE FUNCTION {schema}.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'dcb-store: % on %.% is not allowed, events are immutable',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE OR REPLACE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON {schema}.events
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON {schema}.events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();
CREATE OR REPLACE TRIGGER event_tags_immutable
    BEFORE UPDATE OR DELETE ON {schema}.event_tags
    FOR EACH ROW EXECUTE FUNCTION {schema}.refuse_change();
CREATE OR REPLACE TRIGGER event_tags_no_truncate
    BEFORE TRUNCATE ON {schema}.event_tags
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.refuse_change();
