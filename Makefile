# ngx_http_dify_status_module: build, test, run and measure.
#
#   make          install what is missing, build build/ngx_http_dify_status_module.so
#   make run      ... and run the gateway with a local Redis and a stand-in Dify
#   make test     ... and run the whole test suite (unit, fuzz smoke,
#                 integration, integration under ASan and UBSan)
#   make test-valgrind   the integration tests with nginx under valgrind
#   make bench    the side-by-side benchmark against plain proxy_pass
#   make fuzz     the fuzzers, FUZZ_TIME seconds each (default 60)
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

PROVE     ?= prove
T         ?= t

.PHONY: all deps build unit test test-asan integration-asan test-valgrind \
        run bench fuzz fuzz-smoke clean

all: build

deps:
	@missing=""; \
	for p in $(DEB_PKGS); do \
	    dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null \
	        | grep -q 'install ok installed' || missing="$$missing $$p"; \
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

build: deps $(MODULE)

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

$(MODULE): $(SRCS) $(BUILD)/release/objs/Makefile
	$(call ngx_make,$(BUILD)/release)

$(ASAN_MOD): $(SRCS) $(BUILD)/asan/objs/Makefile
	$(call ngx_make,$(BUILD)/asan)

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
test: build unit fuzz-smoke
	DIFY_MODULE=$(MODULE) $(PROVE) -r $(T)
	@echo "# the integration tests again, with the module under ASan and UBSan"
	$(MAKE) --no-print-directory integration-asan

test-asan: unit integration-asan

integration-asan: deps $(ASAN_MOD)
	DIFY_MODULE=$(ASAN_MOD) DIFY_SANITIZE=asan $(PROVE) -r $(T)

test-valgrind: build
	DIFY_MODULE=$(MODULE) DIFY_SANITIZE=valgrind $(PROVE) -r $(T)

run: build
	./tools/run-gateway

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

clean:
	rm -rf $(BUILD)
