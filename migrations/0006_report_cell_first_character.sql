-- importq_report_cell reads a cell's first character with ascii() instead of left():
-- the same test, without building a one-character string per cell (a report writes
-- several million cells). What it returns is unchanged.
CREATE OR REPLACE FUNCTION importq_report_cell(value text, is_numeric boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN value IS NULL THEN ''
    WHEN strpos(value, '"') > 0 OR strpos(value, ',') > 0
        OR strpos(value, E'\n') > 0 OR strpos(value, E'\r') > 0
        THEN '"' || CASE
            -- = + - @ TAB CR
            WHEN ascii(value) IN (61, 43, 45, 64, 9, 13)
                AND NOT (is_numeric AND importq_trim(value)
                    ~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$')
            THEN '''' ELSE '' END || replace(value, '"', '""') || '"'
    WHEN ascii(value) IN (61, 43, 45, 64, 9, 13)
        AND NOT (is_numeric AND importq_trim(value)
            ~ '^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$')
        THEN '''' || value
    ELSE value
END;
