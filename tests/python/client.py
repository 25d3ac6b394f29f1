"""Drives rk with the official Kubernetes Python client: create, list, patch and watch
on a built-in kind (ConfigMap, Deployment) and on a custom resource. Prints one line per
step; any failure raises (non-zero exit)."""
import sys

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()
custom = client.CustomObjectsApi()

# Built-in: ConfigMap create, list with a selector, strategic patch, watch.
cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
created = core.create_namespaced_config_map("default", cm)
assert created.metadata.uid, "uid set"
listed = core.list_namespaced_config_map("default", label_selector="from=python")
assert [i.metadata.name for i in listed.items] == ["py"], listed.items
rv = listed.metadata.resource_version
core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
w = watch.Watch()
seen = None
for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5):
    if ev["object"].metadata.name == "py":
        seen = (ev["type"], ev["object"].data)
        w.stop()
assert seen == ("MODIFIED", {"a": "1", "b": "2"}), seen
print("configmap ok")

# A typed Deployment round trip, scaled with a patch.
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=1,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    ),
)
apps.create_namespaced_deployment("default", dep)
apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 3}})
got = apps.read_namespaced_deployment("py-web", "default")
assert got.spec.replicas == 3 and got.spec.strategy.type == "RollingUpdate", got.spec
print("deployment ok")

# Custom resources: create, list, merge patch, watch; a bad one is 422.
G, V, P = "example.com", "v1", "widgets"
body = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "pw"}, "spec": {"size": 2}}
made = custom.create_namespaced_custom_object(G, V, "default", P, body)
assert made["spec"]["color"] == "red", made  # defaulted by the schema
objs = custom.list_namespaced_custom_object(G, V, "default", P)
assert [o["metadata"]["name"] for o in objs["items"]] == ["pw"], objs
rv = objs["metadata"]["resourceVersion"]
custom.patch_namespaced_custom_object(G, V, "default", P, "pw", {"spec": {"size": 4}})
w = watch.Watch()
seen = None
for ev in w.stream(custom.list_namespaced_custom_object, G, V, "default", P, resource_version=rv, timeout_seconds=5):
    seen = (ev["type"], ev["object"]["spec"]["size"])
    w.stop()
assert seen == ("MODIFIED", 4), seen
try:
    custom.create_namespaced_custom_object(G, V, "default", P, {**body, "metadata": {"name": "bad"}, "spec": {"size": 99}})
    raise AssertionError("an invalid widget was accepted")
except client.exceptions.ApiException as e:
    assert e.status == 422, e
print("custom ok")
