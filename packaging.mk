# Debian package and system tests (issue #3). Included from the Makefile.
#
#   make deb          build ./tinymq.deb (and ./tinymq_VERSION_all.deb)
#   make lintian      lintian on the source and binary package: no errors or warnings
#   make image        build the cached Debian 12 and 13 images for the system tests
#   make test-system  boot Debian 12 and 13 containers with systemd and test the
#                     installed package
#
# Build and test dependencies are installed with apt-get when missing. The images
# come from the Debian mirror in the host's apt sources (TINYMQ_TEST_MIRROR=URL for
# another) and are cached in /var/cache/tinymq-test (TINYMQ_TEST_CACHE=DIR).

PKG_PYTHON   ?= /usr/bin/python3
# Debian's python3 and tools, never another python3 found first on PATH.
DEB_PATH     := /usr/sbin:/usr/bin:/sbin:/bin
DEB_VERSION  := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_BUILDDIR := build/deb
DEB_FILE     := tinymq_$(DEB_VERSION)_all.deb
DEB_CHANGES  := $(DEB_BUILDDIR)/tinymq_$(DEB_VERSION)_$(shell dpkg --print-architecture).changes

# build-essential: dpkg-buildpackage refuses to build without it, even for this
# Architecture: all package.
BUILD_DEPS  := build-essential dpkg-dev debhelper dh-python pybuild-plugin-pyproject \
               python3-all python3-setuptools git lintian bash-completion
SYSTEM_DEPS := systemd-container debootstrap iproute2 util-linux python3-pytest \
               python3-pytest-timeout

.PHONY: deps-build deps-system deb lintian image test-system

deps-build:
	$(call apt_ensure,$(BUILD_DEPS))

deps-system:
	$(call apt_ensure,$(SYSTEM_DEPS))

# Build from a copy of the project's files (in a git checkout: tracked plus
# untracked, less what .gitignore excludes) so that the work tree stays clean.
deb: deps-build
	rm -rf $(DEB_BUILDDIR)
	mkdir -p $(DEB_BUILDDIR)/tinymq-$(DEB_VERSION)
	@if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ]; then \
	  git ls-files -z --cached --others --exclude-standard; \
	else \
	  find . \( -path ./build -o -path ./.git \) -prune -o \( -type f -o -type l \) -printf '%P\0'; \
	fi \
	  | tar --null -T - --ignore-failed-read -cf - \
	  | tar -xf - -C $(DEB_BUILDDIR)/tinymq-$(DEB_VERSION)
	cd $(DEB_BUILDDIR)/tinymq-$(DEB_VERSION) && env PATH=$(DEB_PATH) dpkg-buildpackage -us -uc
	rm -f tinymq_*_all.deb
	cp $(DEB_BUILDDIR)/$(DEB_FILE) $(DEB_FILE)
	cp $(DEB_FILE) tinymq.deb
	@echo "built ./$(DEB_FILE) and ./tinymq.deb"

lintian: deb
	env PATH=$(DEB_PATH) lintian --allow-root --fail-on error,warning --info $(DEB_CHANGES)

image: deps-system
	$(PKG_PYTHON) tests/system/systest.py image

test-system: deb image
	TINYMQ_SYSTEM_TESTS=1 $(PKG_PYTHON) -m pytest -p no:cacheprovider -v tests/system
