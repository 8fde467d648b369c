-- Run once by the postgres image on an empty data volume: MLflow's store is a second database
-- of the same server, owned by the same user as nasprune's (jobs and trials).
CREATE DATABASE mlflow OWNER nasprune;
