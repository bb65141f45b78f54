# The image of docker-compose.yaml: Airflow's own image plus the project's pinned dependencies and
# its package (plugins/wechat_nontax, with the Bills plugin's entry point and the `nontax`
# command). The DAG files are mounted by the compose file; the development harness (include/)
# is never copied in.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt constraints.txt pyproject.toml /opt/nontax/
COPY plugins/wechat_nontax /opt/nontax/plugins/wechat_nontax
# The same pins as `make install`: requirements.txt (direct, exact) and constraints.txt (the whole
# tree of an install that passed the tests), with the image's own Airflow and its Celery extra
# named, so that pip keeps them; the package's own dependencies (ranges in pyproject.toml) fall on
# the same pins. The harness's packages (requirements-dev.txt) are not installed. `make
# image-deps` (run by CI) resolves exactly this line.
RUN pip install --no-cache-dir "apache-airflow[celery]==3.3.2" -r /opt/nontax/requirements.txt -c /opt/nontax/constraints.txt /opt/nontax
