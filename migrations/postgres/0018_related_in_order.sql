-- A case's related cases are listed in id order: with the order in the index, the lookup is
-- one range read whatever the planner believes of the table. With only `related_case_id`
-- indexed, PostgreSQL, its statistics stale after a large load, walked the whole table in id
-- order instead (3 s at a million cases, on every case page).
DROP INDEX cases_related;
CREATE INDEX cases_related_id ON cases (related_case_id, id);
