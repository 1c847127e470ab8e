#!/usr/bin/perl
#
# The approach of conf/docker/Dockerfile, without docker: nginx built from
# source with the configure arguments of the official image
# (conf/docker/official-configure-args: pkg-oss's, as "nginx -V" in the
# image prints them) loads the module built from the same source by
# conf/docker/build-module.sh (--with-compat, no other flag, the
# Dockerfile's builder stage), passes nginx -t and serves real requests;
# a module built without --with-compat is refused.  Also checks
# runtime-packages.sh (the final stage's libraries) and the Dockerfile's
# shape.
#
# The source: DIFY_OFFICIAL_SRC (a .tar.gz or a tree), else the newest
# mainline (odd minor) tarball in ../shared/nginx/ (DIFY_NGINX_SOURCES to
# look elsewhere); skipped when there is none.  nginx is built once per
# version into build/official-VERSION/ and reused (by make test before
# the tests start: DIFY_OFFICIAL_NGINX); the modules are built anew each
# run.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Cwd qw(abs_path);
use File::Path qw(make_path remove_tree);
use Test::More;
use DifyTest qw(uuid route envelope ids_body);

my $TOP = abs_path("$FindBin::Bin/..");
my $DOCKER = "$TOP/conf/docker";

plan skip_all => 'not under a sanitizer: this builds its own nginx and module'
    if $ENV{DIFY_SANITIZE};
plan skip_all => 'DIFY_NGINX is set: this builds its own nginx (it runs '
               . 'in the default make test)'
    if $ENV{DIFY_NGINX};

sub newest_mainline {
    my $dir = $ENV{DIFY_NGINX_SOURCES} // "$TOP/../shared/nginx";
    my @v;
    for my $f (glob("$dir/nginx-*.tar.gz")) {
        my ($a, $b, $c) = $f =~ /nginx-(\d+)\.(\d+)\.(\d+)\.tar\.gz$/ or next;
        push @v, [ $f, $a, $b, $c ] if $b % 2;
    }
    @v = sort { $a->[1] <=> $b->[1] || $a->[2] <=> $b->[2]
                || $a->[3] <=> $b->[3] } @v;
    return @v ? abs_path($v[-1][0]) : undef;
}

my $SRC = $ENV{DIFY_OFFICIAL_SRC} || newest_mainline();
plan skip_all => 'no nginx source (DIFY_OFFICIAL_SRC, or a mainline '
               . 'tarball in ../shared/nginx/)'
    unless $SRC && -e $SRC;
plan skip_all => 'no gcc/make' unless `which gcc make` =~ /make/;

sub sh {
    my ($cmd) = @_;
    my $out = `$cmd 2>&1`;
    return ($? >> 8, $out);
}

sub unpack_src {
    my ($dst) = @_;
    remove_tree($dst);
    make_path($dst);
    my ($rc, $out) = -d $SRC
        ? sh("cp -a '$SRC/.' '$dst/'")
        : sh("tar -xzf '$SRC' -C '$dst' --strip-components=1");
    die "unpacking $SRC: $out" if $rc;
}

my $version = -d $SRC
    ? DifyTest::_slurp("$SRC/src/core/nginx.h")
    : `tar -xzOf '$SRC' --wildcards '*/src/core/nginx.h'`;
($version) = $version =~ /#define NGINX_VERSION\s+"([\d.]+)"/;
ok $version, "nginx source $SRC: version $version";

my $B = "$TOP/build/official-$version";
make_path($B);

# --- nginx with the official image's configure arguments ---------------

my @args;
for (split /\n/, DifyTest::_slurp("$DOCKER/official-configure-args")) {
    s/^\s+|\s+$//g;
    push @args, $_ if length && !/^#/;
}
ok((grep { $_ eq '--with-compat' } @args), 'the official image is --with-compat');

# DIFY_OFFICIAL_NGINX: built by make test from DIFY_OFFICIAL_SRC with the
# same arguments (the Makefile's build/official-VERSION/nginx), so that
# no compiler runs beside the other tests; otherwise built here, once
my $stamp = join "\n", $SRC, (stat $SRC)[9], @args;
my $NGINX = $ENV{DIFY_OFFICIAL_NGINX} || "$B/nginx";
if (!$ENV{DIFY_OFFICIAL_NGINX}
    && (!-x $NGINX || DifyTest::_slurp("$B/nginx.stamp") ne $stamp))
{
    unlink $NGINX;
    unpack_src("$B/nginx-src");
    my $conf = -x "$B/nginx-src/configure" ? './configure' : 'auto/configure';
    my $q = join ' ', map { my $a = $_; $a =~ s/'/'\\''/g; "'$a'" } @args;
    my ($rc, $out) = sh("cd '$B/nginx-src' && $conf $q");
    is $rc, 0, 'configure with the official arguments' or diag $out;
    ($rc, $out) = sh("make -s -j2 -C '$B/nginx-src' -f objs/Makefile build");
    is $rc, 0, 'make: nginx with the official arguments'
        or diag substr($out, -4000);
    system('cp', "$B/nginx-src/objs/nginx", $NGINX) == 0 or die "cp: $!";
    DifyTest::_spew("$B/nginx.stamp", $stamp);
}
ok -x $NGINX, 'the official-flags nginx is built';

my (undef, $V) = sh("'$NGINX' -V");
like $V, qr{^nginx version: nginx/\Q$version\E$}m, "nginx -V: $version";
for my $a (@args) {
    my ($name) = $a =~ /^(--[^=]+)/;
    if ($a =~ /^--with-(cc|ld)-opt=(.*)$/) {
        like $V, qr/\Q--with-$1-opt='$2'\E/, "nginx -V shows $name as the image";
    } elsif ($a =~ /=/) {
        like $V, qr/(?:^|\s)\Q$a\E(?:\s|$)/, "nginx -V shows $a";
    }
}
like $V, qr/--with-http_v3_module/, 'nginx -V: --with-http_v3_module (and the rest)';

# --- the module as the Dockerfile's builder stage builds it --------------

unpack_src("$B/module-src");
remove_tree("$B/module");
my ($rc, $out) = sh("'$DOCKER/build-module.sh' '$B/module-src' '$TOP' "
                    . "'$B/module'");
is $rc, 0, 'build-module.sh: the module with --with-compat and no other flag'
    or diag $out;
my $MOD = "$B/module/ngx_http_dify_status_module.so";
ok -f $MOD, 'build-module.sh wrote the .so';
like DifyTest::_slurp("$B/module/configure.log"), qr/ngx_http_dify_status_module/,
    'configure saw the module';

# the libraries the final stage installs
($rc, $out) = sh("'$DOCKER/runtime-packages.sh' '$MOD'");
is $rc, 0, 'runtime-packages.sh';
like $out, qr/^libhiredis[\w.]+$/m, 'runtime packages: libhiredis';
like $out, qr/^libjansson\d+$/m, 'runtime packages: libjansson';
unlike $out, qr/^(?!lib)/m, 'runtime packages: library packages only';
note "runtime packages:\n$out";

# --- the one loads into the other ----------------------------------------

$DifyTest::NGINX  = $NGINX;
$DifyTest::MODULE = $MOD;
my $t = DifyTest->new;

($rc, $out) = $t->nginx_t(server => q{
    location /v1 { dify_status on; proxy_pass http://upstream; }
});
is $rc, 0, 'nginx -t: the official-flags nginx loads the module' or diag $out;
unlike $out, qr/not binary compatible|\[emerg\]/, 'no compatibility complaint';

$t->start_redis;
$t->start_nginx(
    http => q{
    dify_status_redis %%REDIS%% timeout=500ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location /v1 {
            dify_status on;
            dify_status_limit rate=100r/m burst=3;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
    });

my %H = (Authorization => 'Bearer dataset-official',
         'Content-Type' => 'application/json');
my $body = ids_body(uuid(2));
my $r = $t->request('PATCH', route(uuid(1), 'enable'), headers => \%H,
                    body => $body);
$t->pass_ok($r, body => $body, name => 'a valid batch passes, byte for byte');

$r = $t->request('PATCH', route(uuid(1), 'explode'), headers => \%H,
                 body => $body);
$t->reject_ok($r, 400, 'invalid_action', 'Invalid action.',
              'an invalid action gets Dify\'s 400');

my $limited = 0;
for (1 .. 6) {
    $r = $t->request('PATCH', route(uuid(1), 'enable'), headers => \%H,
                     body => $body);
    $limited++ if $r->{status} == 429;
}
ok $limited > 0, "the Redis limit applies ($limited of 6 limited)";

$r = $t->request('GET', '/metrics');
is $r->{status}, 200, '/metrics';
like $r->{body}, qr/^dify_status_requests_checked_total \d+$/m,
    'the metrics are served';
$t->done;

# --- without --with-compat, the official nginx refuses it ----------------

{
    unpack_src("$B/nocompat-src");
    my $conf = -x "$B/nocompat-src/configure" ? './configure' : 'auto/configure';
    ($rc, $out) = sh("cd '$B/nocompat-src' && $conf --add-dynamic-module='$TOP' "
                     . "&& make -s -j2 -f objs/Makefile modules");
    is $rc, 0, 'a module built from the same source without --with-compat'
        or diag substr($out, -3000);
    $DifyTest::MODULE = "$B/nocompat-src/objs/ngx_http_dify_status_module.so";
    my $t2 = DifyTest->new;
    ($rc, $out) = $t2->nginx_t(server => q{ location / { return 204; } });
    isnt $rc, 0, 'nginx -t fails with it';
    like $out, qr/is not binary compatible/,
        '"is not binary compatible": why the Dockerfile builds --with-compat';
    $t2->done;
    remove_tree("$B/nocompat-src");
}

# --- the Dockerfile ----------------------------------------------------

{
    my $d = DifyTest::_slurp("$DOCKER/Dockerfile");
    like $d, qr/^ARG NGINX_VERSION=\d+\.\d+\.\d+$/m, 'ARG NGINX_VERSION';
    my @from = $d =~ /^FROM (\S+)/mg;
    is_deeply \@from, [ 'nginx:${NGINX_VERSION}', 'nginx:${NGINX_VERSION}' ],
        'builder and final stage: the official image of that version';
    like $d, qr{https://nginx\.org/download/nginx-\$\{NGINX_VERSION\}\.tar\.gz},
        'the source from nginx.org';
    like $d, qr/\$\{NGINX_SHA256\}  nginx\.tar\.gz" \| sha256sum -c -/,
        'its SHA-256 checked';
    like $d, qr/build-module\.sh \/src\/nginx \/src\/module \/out;/,
        'built by build-module.sh (the script tested above)';
    like $d, qr/runtime-packages\.sh \/out\/ngx_http_dify_status_module\.so/,
        'runtime libraries by runtime-packages.sh';
    like $d, qr{^COPY --from=build /out/ngx_http_dify_status_module\.so /usr/lib/nginx/modules/$}m,
        'the module into the official modules path';
    like $d, qr/nginx -t -c/, 'the image build fails unless nginx loads it';
}

done_testing;
