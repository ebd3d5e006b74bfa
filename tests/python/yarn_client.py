"""Drives Spindle's YARN REST routes with yarn-api-client (PyPI), unchanged, as a YARN user would.

Usage: yarn_client.py RM_URL TOKEN APP_ID NODE_ID
Prints one JSON object with what the client read, for tests/yarn_rest.rs to check.
"""

import json
import sys
import time

import requests
from yarn_api_client.resource_manager import ResourceManager


class Bearer(requests.auth.AuthBase):
    """Spindle's API token as a bearer token."""

    def __init__(self, token):
        self.token = token

    def __call__(self, request):
        request.headers["Authorization"] = "Bearer " + self.token
        return request


def main():
    url, token, app_id, node_id = sys.argv[1:5]
    rm = ResourceManager(service_endpoints=[url], auth=Bearer(token), timeout=10)
    out = {
        "info": rm.cluster_information().data["clusterInfo"],
        "metrics": rm.cluster_metrics().data["clusterMetrics"],
        "scheduler": rm.cluster_scheduler().data["scheduler"]["schedulerInfo"],
        "apps": rm.cluster_applications().data["apps"]["app"],
        "finished_apps": rm.cluster_applications(states=["FINISHED"]).data["apps"]["app"],
        "app": rm.cluster_application(app_id).data["app"],
        "attempts": rm.cluster_application_attempts(app_id).data["appAttempts"]["appAttempt"],
        "nodes": rm.cluster_nodes().data["nodes"]["node"],
        "node": rm.cluster_node(node_id).data["node"],
    }
    # A shell app submitted and killed through the YARN routes.
    new = rm.cluster_new_application().data
    submission = {
        "application-id": new["application-id"],
        "application-name": "yarn-sleeper",
        "queue": "default",
        "am-container-spec": {
            "commands": {"command": "echo from-yarn $GREETING; sleep 600"},
            "environment": {"entry": [{"key": "GREETING", "value": "hello"}]},
        },
        "resource": {"memory": 128, "vCores": 1},
        "max-app-attempts": 1,
        "application-type": "YARN",
    }
    submitted = rm.cluster_submit_application(submission)
    out["new_application"] = new
    out["submitted"] = submitted.data
    deadline = time.time() + 60
    state = None
    while time.time() < deadline:
        state = rm.cluster_application_state(new["application-id"]).data["state"]
        if state == "RUNNING":
            break
        time.sleep(0.2)
    out["submitted_state"] = state
    out["submitted_app"] = rm.cluster_application(new["application-id"]).data["app"]
    out["kill"] = rm.cluster_application_kill(new["application-id"]).data
    out["state_after_kill"] = rm.cluster_application_state(new["application-id"]).data["state"]
    # A route outside the subset: the client raises on the 501.
    try:
        rm.cluster_reservations()
        out["unsupported"] = "answered"
    except Exception as error:  # the client's own error type for a non-2xx answer
        out["unsupported"] = str(error)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
