#!/bin/bash
# Runs once, on an empty data directory (the postgres image's
# /docker-entrypoint-initdb.d): one role and one database per service, each role
# owning its database and nothing else, so no service can reach another's tables.
set -euo pipefail

for service in user inventory order; do
    password_var="SHOP_${service^^}_DB_PASSWORD"
    password=${!password_var:?$password_var must be set}
    psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
        -v name="shop_$service" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
REVOKE ALL ON DATABASE :"name" FROM PUBLIC;
SQL
done
