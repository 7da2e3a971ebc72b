"""Prefect flows: they compose the stages of tasks/ and the training of lm/.

Importing this package points Prefect and MLflow at the Forja home (./.forja by default) unless
the environment already names servers (PREFECT_API_URL, MLFLOW_TRACKING_URI); see forja/home.py.
"""

from forja.home import configure

configure()
