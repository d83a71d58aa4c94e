-- Run once by the postgres image's entrypoint, when its data volume is empty
-- (/docker-entrypoint-initdb.d), as POSTGRES_USER, who owns both databases.
-- Prefect and MLflow each create their tables in their own database on first start.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
