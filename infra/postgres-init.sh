#!/bin/sh
# Create one database per name in POSTGRES_MULTIPLE_DATABASES (Prefect's and MLflow's).
set -eu
for db in $(echo "${POSTGRES_MULTIPLE_DATABASES}" | tr ',' ' '); do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" -c "CREATE DATABASE \"$db\";"
done
