-- The NHS England commissioning region each registered organisation belongs to (the GP
-- practice file's "national grouping", such as Y56 London), for the managers' lifecycle and
-- coverage reports by region. Empty until the registry is imported again.
ALTER TABLE ods_registry ADD COLUMN region TEXT;
