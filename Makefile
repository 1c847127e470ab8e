# ngx_http_dify_status_module: build, test, run and measure.
#
#   make          install what is missing, build build/ngx_http_dify_status_module.so
#   make run      ... and run the gateway with a local Redis and a stand-in Dify
#   make test     ... and run the whole test suite (unit, fuzz smoke,
#                 integration, integration under ASan and UBSan)
#   make test-valgrind   the integration tests with nginx under valgrind
#   make bench    the side-by-side benchmark against plain proxy_pass
#   make fuzz     the fuzzers, FUZZ_TIME seconds each (default 60)
#   make deb      the Debian package, build/libnginx-mod-http-dify-status_*.deb
#
#   make NGINX_SRC=path        build against another nginx: path is an nginx
#   make test NGINX_SRC=path   source tree or a .tar.gz of one; the module is
#                 built with --with-compat, and nginx itself from the same
#                 source for the tests, all in build/nginx-VERSION/
#
# The module is built the way Debian builds its own nginx modules: from
# nginx-dev's sources with Debian's configure flags, so the stock
# /usr/sbin/nginx loads it.  Everything is written below build/.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

NGX_SRC   ?= /usr/share/nginx/src
BUILD     := $(CURDIR)/build
MODULE    := $(BUILD)/ngx_http_dify_status_module.so
ASAN_MOD  := $(BUILD)/asan/ngx_http_dify_status_module.so
SRCDIR    := ngx_dify_status_module
SRCS      := $(wildcard $(SRCDIR)/*.c $(SRCDIR)/*.h) config
PURE_SRCS := $(wildcard $(SRCDIR)/dify_*.c)

DEB_PKGS  := nginx nginx-dev libhiredis-dev libjansson-dev libssl-dev \
             redis-server redis-sentinel libcmocka-dev gcc make perl curl \
             wrk valgrind clang libclang-rt-14-dev procps iproute2 \
             dnsmasq-base libfaketime
# what "make deb" needs on top (lintian: for the package's test)
PKG_PKGS  := dpkg-dev debhelper lintian

# promtool for t/62-prometheus.t: Debian's prometheus package, unpacked
# into build/ (not installed: no service, 19 MB), unless one is in PATH
PROMTOOL  := $(or $(shell command -v promtool 2>/dev/null),\
                  $(BUILD)/promtool/usr/bin/promtool)

# t/61-official-image.t: nginx built with the official image's configure
# arguments from the newest mainline (odd minor) source of ../shared/nginx/
# (NGINX_SOURCES=dir); built here, before the tests run in parallel
NGINX_SOURCES ?= $(abspath $(CURDIR)/../shared/nginx)
OFFICIAL_SRC  := $(shell ls $(NGINX_SOURCES)/nginx-*.tar.gz 2>/dev/null \
                   | grep -E '/nginx-[0-9]+\.[0-9]*[13579]\.[0-9]+\.tar\.gz$$' \
                   | sort -V | tail -1)
OFFICIAL_VER  := $(patsubst nginx-%.tar.gz,%,$(notdir $(OFFICIAL_SRC)))
OFFICIAL_NGX  := $(if $(OFFICIAL_SRC),$(BUILD)/official-$(OFFICIAL_VER)/nginx)
OFFICIAL_ENV  := $(if $(OFFICIAL_SRC),DIFY_OFFICIAL_SRC=$(OFFICIAL_SRC) \
                   DIFY_OFFICIAL_NGINX=$(OFFICIAL_NGX))

# the Debian package, named and versioned by debian/changelog
DEB_NAME  := libnginx-mod-http-dify-status
DEB_VER   := $(shell sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)
DEB_ARCH  := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_FILE  := $(BUILD)/$(DEB_NAME)_$(DEB_VER)_$(DEB_ARCH).deb
DEB_SRCS  := $(SRCS) $(wildcard debian/* debian/source/*) README.md LICENSE \
             tools/dify-status-limit conf/dify-status-standalone.conf

CC_OPT    := -g -O2 -fstack-protector-strong -Wformat \
             -Werror=format-security -fPIC -D_FORTIFY_SOURCE=2 \
             -Wall -Wextra -Wno-unused-parameter -Werror
LD_OPT    := -Wl,-z,relro -Wl,-z,now -fPIC
SAN_OPT   := -g -O1 -fPIC -fno-omit-frame-pointer \
             -fsanitize=address,undefined -fno-sanitize-recover=all \
             -Wall -Wno-unused-parameter -Werror
SAN_LD    := -fPIC -fsanitize=address,undefined

UNIT_CFLAGS := -std=gnu99 -g -O1 -Wall -Wextra -Werror -I$(SRCDIR) \
               -fsanitize=address,undefined -fno-omit-frame-pointer
UNIT_LIBS   := -lcmocka -ljansson -lhiredis -lcrypto

# the integration tests run two at a time (2 CPUs: most of a test's time
# is spent waiting); PROVE=prove for one at a time.  SERIAL_T run alone
# afterwards: they stall a worker against a 50 ms Redis timeout, load the
# machine with wrk, or time a failover (Sentinel, Cluster) against a
# second, and must not share the CPUs with another test.
PROVE     ?= prove -j2
T         ?= t
SERIAL_T  ?= t/14-redis-startup.t t/15-redis-stall.t t/40-faults-load.t \
             t/50-sentinel.t t/51-cluster.t t/52-cluster-limits.t \
             t/53-cluster-tls.t
# SKIP_T: files left out of T=t (the nginx matrix's stable run)
SKIP_T    ?=
ifeq ($(strip $(T)),t)
PAR_T     := $(filter-out $(SERIAL_T) $(SKIP_T),$(sort $(wildcard t/*.t)))
ALONE_T   := $(filter-out $(SKIP_T),$(SERIAL_T))
# $(1): the environment of the tests
# (prove without files runs all of t/: none is run when none is left)
run_tests = $(1) $(PROVE) $(PAR_T) $(if $(strip $(ALONE_T)),&& $(1) prove $(ALONE_T))
else
run_tests = $(1) $(PROVE) -r $(T)
endif

# Another nginx: NGINX_SRC is a source tree (nginx's own repository, with
# auto/configure, or a release, with ./configure) or a .tar.gz of one.
# Its nginx is configured with --with-compat and the modules the tests
# use; the release module is built along with that nginx, the ASan module
# by a second configure of the same source, and both load into that
# nginx binary (the tests run it through DIFY_NGINX).
NGINX_SRC ?=
NGX_TEST_FLAGS := --with-compat --with-debug --with-threads \
                  --with-http_ssl_module --with-http_v2_module \
                  --with-http_auth_request_module --with-http_realip_module \
                  --with-http_stub_status_module
ifneq ($(strip $(NGINX_SRC)),)
NGX_SRC_IN := $(abspath $(NGINX_SRC))
ifneq ($(wildcard $(NGX_SRC_IN)/src/core/nginx.h),)
NGX_VER    := $(shell sed -n 's/^\#define NGINX_VERSION *"\(.*\)"/\1/p' \
                  $(NGX_SRC_IN)/src/core/nginx.h)
NGX_SRC_DEP := $(NGX_SRC_IN)/src/core/nginx.h
else
NGX_VER    := $(shell tar -xzOf $(NGX_SRC_IN) --wildcards '*/src/core/nginx.h' \
                  2>/dev/null \
                  | sed -n 's/^\#define NGINX_VERSION *"\(.*\)"/\1/p')
NGX_SRC_DEP := $(NGX_SRC_IN)
endif
ifeq ($(NGX_VER),)
$(error NGINX_SRC=$(NGINX_SRC): no nginx source tree or .tar.gz of one there)
endif
VBUILD     := $(BUILD)/nginx-$(NGX_VER)
# another source of the same version (a tree instead of the tarball)
# configures anew: build/nginx-VERSION/source names the one built
$(shell mkdir -p $(VBUILD) && { echo '$(NGX_SRC_IN)' \
    | cmp -s - $(VBUILD)/source || echo '$(NGX_SRC_IN)' > $(VBUILD)/source; })
NGX_SRC_DEP += $(VBUILD)/source
MODULE     := $(VBUILD)/ngx_http_dify_status_module.so
ASAN_MOD   := $(VBUILD)/asan/ngx_http_dify_status_module.so
NGINX_BIN  := $(VBUILD)/nginx
TEST_ENV   := DIFY_NGINX=$(NGINX_BIN) DIFY_PROMTOOL=$(PROMTOOL)
RUN_ENV    := $(TEST_ENV) DIFY_MODULE=$(MODULE)
else
NGINX_BIN  :=
TEST_ENV    = DIFY_DEB=$(DEB_FILE) DIFY_PROMTOOL=$(PROMTOOL) $(OFFICIAL_ENV)
RUN_ENV    :=
TEST_DEB    = deb $(OFFICIAL_NGX)
endif

.PHONY: all deps build unit test test-asan integration integration-asan \
        test-valgrind run bench fuzz fuzz-smoke clean deb

all: build

# $(1): the Debian packages to install when missing
define install_missing
	@missing=""; \
	for p in $(1); do \
	    dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null \
	        | grep -Eq 'install ok (installed|triggers-)' \
	        || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" != 0 ]; then \
	        echo "missing Debian packages:$$missing" >&2; \
	        echo "run 'make deps' as root, or: apt-get install$$missing" >&2; \
	        exit 1; \
	    fi; \
	    echo "installing:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq; \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

deps:
	$(call install_missing,$(DEB_PKGS))

build: deps $(MODULE) $(NGINX_BIN)

# Debian's recipe: nginx-dev's sources configured with Debian's flags
# (conf_flags), copied into build/ so the system folder stays untouched.
# $(1): build folder, $(2): cc opt, $(3): ld opt
define ngx_configure
	rm -rf $(1) && mkdir -p $(1)
	cp -a $(NGX_SRC) $(1)/nginx-src
	cd $(1)/nginx-src && . ./conf_flags \
	    && ./configure "$${NGX_CONF_FLAGS[@]}" \
	        --with-cc-opt='$(2)' --with-ld-opt='$(3)' \
	        --add-dynamic-module=$(CURDIR) \
	        --builddir=$(1)/objs > $(1)/configure.log \
	    || { tail -20 $(1)/configure.log; exit 1; }
endef

define ngx_make
	$(MAKE) -s -f $(1)/objs/Makefile -C $(1)/nginx-src modules
	cp $(1)/objs/ngx_http_dify_status_module.so $@
endef

$(BUILD)/release/objs/Makefile: config
	$(call ngx_configure,$(BUILD)/release,$(CC_OPT),$(LD_OPT))

$(BUILD)/asan/objs/Makefile: config
	$(call ngx_configure,$(BUILD)/asan,$(SAN_OPT),$(SAN_LD))

ifeq ($(strip $(NGINX_SRC)),)

$(MODULE): $(SRCS) $(BUILD)/release/objs/Makefile
	$(call ngx_make,$(BUILD)/release)

$(ASAN_MOD): $(SRCS) $(BUILD)/asan/objs/Makefile
	$(call ngx_make,$(BUILD)/asan)

else

# $(1): build folder, $(2): cc opt, $(3): ld opt
define ngx_src_configure
	rm -rf $(1)/nginx-src $(1)/objs && mkdir -p $(1)/nginx-src
	if [ -d $(NGX_SRC_IN) ]; then \
	    cp -a $(NGX_SRC_IN)/. $(1)/nginx-src/; \
	else \
	    tar -xzf $(NGX_SRC_IN) -C $(1)/nginx-src --strip-components=1; \
	fi
	cd $(1)/nginx-src \
	    && if [ -x configure ]; then c=./configure; else c=auto/configure; fi \
	    && $$c --prefix=$(VBUILD)/prefix $(NGX_TEST_FLAGS) \
	        --with-cc-opt='$(2)' --with-ld-opt='$(3)' \
	        --add-dynamic-module=$(CURDIR) \
	        --builddir=$(1)/objs > $(1)/configure.log \
	    || { tail -20 $(1)/configure.log; exit 1; }
endef

$(VBUILD)/objs/Makefile: config $(NGX_SRC_DEP)
	$(call ngx_src_configure,$(VBUILD),$(CC_OPT),$(LD_OPT))

$(VBUILD)/asan/objs/Makefile: config $(NGX_SRC_DEP)
	$(call ngx_src_configure,$(VBUILD)/asan,$(SAN_OPT),$(SAN_LD))

# nginx and the module, in one make (nginx's own Makefile does both)
$(MODULE): $(SRCS) $(VBUILD)/objs/Makefile
	$(MAKE) -s -j2 -f $(VBUILD)/objs/Makefile -C $(VBUILD)/nginx-src \
	    build > $(VBUILD)/make.log 2>&1 || { tail -40 $(VBUILD)/make.log; exit 1; }
	cp $(VBUILD)/objs/ngx_http_dify_status_module.so $@
	cp $(VBUILD)/objs/nginx $(NGINX_BIN)

$(NGINX_BIN): $(MODULE)

$(ASAN_MOD): $(SRCS) $(VBUILD)/asan/objs/Makefile
	$(MAKE) -s -j2 -f $(VBUILD)/asan/objs/Makefile \
	    -C $(VBUILD)/asan/nginx-src modules
	cp $(VBUILD)/asan/objs/ngx_http_dify_status_module.so $@

endif

# unit tests of the pure core (no nginx), under ASan and UBSan
UNIT_TESTS := $(patsubst t/unit/%.c,$(BUILD)/unit/%,$(wildcard t/unit/test_*.c))

$(BUILD)/unit/%: t/unit/%.c $(PURE_SRCS) $(wildcard $(SRCDIR)/dify_*.h)
	@mkdir -p $(BUILD)/unit
	$(CC) $(UNIT_CFLAGS) -o $@ $< $(PURE_SRCS) $(UNIT_LIBS)

unit: deps $(UNIT_TESTS)
	@for t in $(UNIT_TESTS); do echo "# $$t"; $$t; done

# The whole suite: the pure core's unit tests, a short run of each fuzzer,
# the integration tests against the release build, then the same tests
# against the module built with AddressSanitizer and UBSan.
test: build unit fuzz-smoke $(TEST_DEB) $(PROMTOOL)
	$(call run_tests,$(TEST_ENV) DIFY_MODULE=$(MODULE))
	@echo "# the integration tests again, with the module under ASan and UBSan"
	$(MAKE) --no-print-directory integration-asan

test-asan: unit integration-asan

# the integration tests alone, against the release build (T=files to
# choose; .ci/run runs them against each nginx of ../shared/nginx/)
integration: build $(PROMTOOL)
	$(call run_tests,$(TEST_ENV) DIFY_MODULE=$(MODULE))

integration-asan: deps $(ASAN_MOD)
	$(call run_tests,$(TEST_ENV) DIFY_MODULE=$(ASAN_MOD) DIFY_SANITIZE=asan)

test-valgrind: build
	$(TEST_ENV) DIFY_MODULE=$(MODULE) DIFY_SANITIZE=valgrind $(PROVE) -r $(T)

run: build
	$(RUN_ENV) ./tools/run-gateway

bench: build
	DIFY_MODULE=$(MODULE) BENCH_OUT=$(BUILD)/bench ./bench/run

FUZZ_TIME ?= 60
FUZZERS   := $(patsubst fuzz/%.c,$(BUILD)/fuzz/%,$(wildcard fuzz/fuzz_*.c))

$(BUILD)/fuzz/%: fuzz/%.c $(PURE_SRCS)
	@mkdir -p $(BUILD)/fuzz
	clang -g -O1 -I$(SRCDIR) -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=all \
	    -o $@ $< $(PURE_SRCS) -ljansson -lhiredis -lcrypto

fuzz: deps $(FUZZERS)
	./fuzz/run $(FUZZ_TIME) $(FUZZERS)

fuzz-smoke: deps $(FUZZERS)
	./fuzz/run 10 $(FUZZERS)

$(BUILD)/official-%/nginx: conf/docker/official-configure-args \
                           $(NGINX_SOURCES)/nginx-%.tar.gz
	rm -rf $(@D) && mkdir -p $(@D)/nginx-src
	tar -xzf $(NGINX_SOURCES)/nginx-$*.tar.gz -C $(@D)/nginx-src \
	    --strip-components=1
	cd $(@D)/nginx-src \
	    && if [ -x configure ]; then c=./configure; else c=auto/configure; fi \
	    && grep -v -e '^#' -e '^$$' $(CURDIR)/conf/docker/official-configure-args \
	        | tr '\n' '\0' | xargs -0 $$c > $(@D)/configure.log 2>&1 \
	    || { tail -20 $(@D)/configure.log; exit 1; }
	$(MAKE) -s -j2 -C $(@D)/nginx-src -f objs/Makefile build \
	    > $(@D)/make.log 2>&1 || { tail -40 $(@D)/make.log; exit 1; }
	cp $(@D)/nginx-src/objs/nginx $@

$(BUILD)/promtool/usr/bin/promtool:
	rm -rf $(BUILD)/promtool && mkdir -p $(BUILD)/promtool
	cd $(BUILD)/promtool && apt-get download -qq prometheus 2>/dev/null \
	    || { apt-get update -qq && apt-get download -qq prometheus; }
	dpkg-deb -x $(BUILD)/promtool/prometheus_*.deb $(BUILD)/promtool
	$@ --version > /dev/null

# The package is built as Debian builds its libnginx-mod-* packages
# (debian/rules: dh with nginx-dev's "nginx" add-on), from a copy of the
# sources in build/deb/, so that dpkg-buildpackage writes only there.
deb: deps $(DEB_FILE)

$(DEB_FILE): $(DEB_SRCS)
	$(call install_missing,$(PKG_PKGS))
	rm -rf $(BUILD)/deb && mkdir -p $(BUILD)/deb/src
	cp -a config LICENSE README.md debian $(SRCDIR) $(BUILD)/deb/src/
	mkdir -p $(BUILD)/deb/src/tools $(BUILD)/deb/src/conf
	cp -a tools/dify-status-limit $(BUILD)/deb/src/tools/
	cp -a conf/dify-status-standalone.conf $(BUILD)/deb/src/conf/
	cd $(BUILD)/deb/src && DEB_BUILD_OPTIONS=noautodbgsym \
	    dpkg-buildpackage -b -us -uc > $(BUILD)/deb/build.log 2>&1 \
	    || { tail -40 $(BUILD)/deb/build.log; exit 1; }
	cp $(BUILD)/deb/$(notdir $(DEB_FILE)) $@

clean:
	rm -rf $(BUILD)
