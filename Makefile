# Two commands a newcomer needs: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
# The venv is made from Debian's interpreter: the Triton python-backend stub in the
# nvidia-pytriton wheel links the system libpython3.11, and GStreamer's python3-gi is built for it.
SYSTEM_PYTHON := /usr/bin/python3

# Debian packages the demo and the tests start for real (ARCHITECTURE.md, "Real parts").
# Node.js and npm (balena's compose parser) come from Debian unless the machine has them already (a newer
# nodejs package that bundles npm conflicts with Debian's npm).
# libgl1: the cv2 of opencv-python (which `trackers`, in the dev extra, pulls in) links libGL.
APT_PACKAGES := python3-venv python3-dev python3-gi gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0 \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-plugins-bad gstreamer1.0-libav \
	gstreamer1.0-tools opencv-doc ffmpeg mosquitto mosquitto-clients prometheus prometheus-node-exporter prometheus-alertmanager \
	chromium chromium-driver postgresql libb64-0d \
	systemd-container debootstrap apt-cacher-ng iproute2 openssh-client bridge-utils \
	libgl1 podman runc systemd-journal-remote

EXTRAS := server,fleet,review,cloud,train,dev

# The device side (app/ and fleet/spec/) runs on JetPack 6's CPython 3.10: a second venv with that
# interpreter and the device's pins (constraints-device.txt) runs the app's unit tests. pyenv provides it:
#   pyenv install 3.10.13   (or: make PY310=/path/to/python3.10 test-py310)
PY310    ?= $(or $(wildcard $(HOME)/.pyenv/versions/3.10.13/bin/python3.10),$(shell command -v python3.10))
VENV310  := .venv310

.PHONY: setup apt venv venv310 node-tools demo test test-py310 test-container lint test-fast clean clean-hosts lock bench

setup: apt venv node-tools

apt: $(VENV)/.apt-stamp
$(VENV)/.apt-stamp:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:" $$missing; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Debian starts some of these as services; the tests start their own on 127.0.0.1.
	-@systemctl disable --now mosquitto prometheus prometheus-node-exporter prometheus-alertmanager apt-cacher-ng postgresql >/dev/null 2>&1 || true
	@mkdir -p $(VENV) && touch $@

venv: $(VENV)/.pip-stamp
$(VENV)/.pip-stamp: pyproject.toml constraints.txt | $(VENV)/.apt-stamp
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip==26.3 wheel==0.48.0 setuptools==84.2.1
	@# -qq: setuptools warns about every flat-layout editable install; errors still show.
	$(PIP) install -qq -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

# balena's own compose parser for tests/balena (npm, pinned by its package-lock.json; no install scripts).
BALENA_COMPOSE := tests/tools/balena-compose
node-tools: $(BALENA_COMPOSE)/node_modules/.stamp
$(BALENA_COMPOSE)/node_modules/.stamp: $(BALENA_COMPOSE)/package-lock.json | $(VENV)/.apt-stamp
	npm ci --prefix $(BALENA_COMPOSE) --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

venv310: $(VENV310)/.pip-stamp
$(VENV310)/.pip-stamp: constraints-device.txt requirements-test-py310.txt
	@test -n "$(PY310)" || { echo "CPython 3.10 not found: run 'pyenv install 3.10.13' (pyenv is on these machines) or pass PY310=/path/to/python3.10"; exit 1; }
	test -x $(VENV310)/bin/python || $(PY310) -m venv $(VENV310)
	$(VENV310)/bin/pip install -q --upgrade pip==26.3
	$(VENV310)/bin/pip install -q -r requirements-test-py310.txt
	touch $@

# The app's unit tests under CPython 3.10 (the repository on PYTHONPATH, not installed: only the device
# runtime is in that venv).
test-py310: venv310
	@# (left to the main venv: the ByteTrack comparison needs the `trackers` reference package, and the
	@# evidence-demo test runs the control plane's demo)
	PYTHONPATH=$(CURDIR) $(VENV310)/bin/python -m pytest tests/app -m "not integration and not slow" -p no:cacheprovider -q \
		--deselect tests/app/pipeline/test_tracker.py::test_fewer_id_switches_than_the_reference_bytetrack_on_synthetic_ground_truth \
		--deselect tests/app/evidence/test_packager.py::test_demo_keeps_evidence_when_asked

# Re-pin every dependency after changing pyproject.toml.
lock:
	$(PIP) freeze --exclude-editable | grep -v '^-e ' > constraints.txt

demo: setup
	$(VENV)/bin/edgecv demo

lint: setup
	$(VENV)/bin/ruff check app fleet tests bench pulumi models
	$(VENV)/bin/yamllint -s .
	@if ls roles/*/tasks/main.yml >/dev/null 2>&1; then ANSIBLE_INVENTORY=inventory/example PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint --profile production -q; fi

# pytest-xdist workers for make test: the suite mostly waits on servers, playbooks and subprocesses, so two
# workers on a 2-core machine halve its time; tests sharing the booted Ansible lab stay on one worker.
TEST_WORKERS ?= 2

# The container suite (podman builds the app image: ~14 min on vfs storage) runs on its own: make test-container.
test: setup lint test-py310
	$(VENV)/bin/pytest -m "not container" -n $(TEST_WORKERS) --dist loadgroup

test-container: setup
	$(VENV)/bin/pytest -m container

test-fast: setup
	$(VENV)/bin/pytest -m "not slow"

bench: setup
	for b in bench/[a-z]*.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

clean-hosts:
	-$(PY) -m tests.ansible.hosts cleanup 2>/dev/null || true

clean: clean-hosts
	rm -rf $(VENV) $(VENV310) .pytest_cache .ruff_cache
