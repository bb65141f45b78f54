# The image of docker-compose.yaml: Airflow's own image plus the project's pinned dependencies.
# The project's code (dags/, plugins/, include/) is mounted by the compose file, not copied.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt /opt/nontax/
# The same pins as `make install`: requirements.txt (direct, exact) and constraints.txt (the whole
# tree of an install that passed the tests), with the image's own Airflow and its Celery extra
# named, so that pip keeps them. `make image-deps` (run by CI) resolves exactly this line.
RUN pip install --no-cache-dir "apache-airflow[celery]==3.3.2" -r /opt/nontax/requirements.txt -c /opt/nontax/constraints.txt
