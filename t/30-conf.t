#!/usr/bin/perl
#
# Every configuration the project ships passes "nginx -t" with the built
# module:
#
#   conf/dify-status-standalone.conf   rendered the way tools/run-gateway
#                                      renders it (@PLACEHOLDERS@)
#   conf/dify-docker/                  the snippets put into a copy of the
#                                      structure of Dify's docker nginx
#                                      templates (api:5001 replaced by the
#                                      test's upstream), rendered the way
#                                      Dify's entrypoint renders them
#                                      (envsubst of the container's
#                                      environment), then also run live
#
# and the pieces agree with each other: the placeholders the standalone
# template documents are the ones it uses; every ${VAR} of the docker
# snippets is set by docker-compose.override.yaml; the image's Dockerfile
# (conf/docker/) installs the module where the load_module line looks for
# it, and the override runs that image.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Path qw(make_path);
use DifyTest qw(uuid route envelope ids_body);
use DifyLimit qw(fresh_key patch);

DifyTest::require_module();

my $TOP = "$FindBin::Bin/..";
my $DOCKER = "$TOP/conf/dify-docker";

sub slurp {
    my ($f) = @_;
    open my $fh, '<', $f or die "$f: $!\n";
    local $/;
    return <$fh>;
}

sub spew {
    my ($f, $d) = @_;
    open my $fh, '>', $f or die "$f: $!\n";
    print $fh $d;
    close $fh or die "$f: $!\n";
}

sub nginx_t_ok {
    my ($t, $conf, $name) = @_;
    my ($rc, $out) = $t->nginx_t(conf => $conf);
    is $rc, 0, "nginx -t: $name" or diag $out;
    like $out, qr/test is successful/, "nginx -t says so: $name";
}



# ------------------------------------------------------------------
# nginx's own log lines that quote the Authorization header (all at
# "info": a duplicate header, a header line over the buffers, a NUL in a
# value over HTTP/1.1 and HTTP/2): the module cannot change them, so
# every configuration it ships logs at "notice" or above.  Sends each,
# then returns what the error log and the access log hold.

my $PROBE_SECRET = 'Pq8Wd3Lk6Vn1Zr5Tb9Xm2Hs';
my $PROBE_KEY = "dataset-$PROBE_SECRET";

sub core_log_probes {
    my ($t, %o) = @_;
    my $path = route(uuid(7), 'enable');
    my $body = ids_body(uuid(8));
    my $head = "PATCH $path HTTP/1.1\r\nHost: gw\r\n"
             . "Content-Type: application/json\r\n"
             . "Content-Length: " . length($body) . "\r\n"
             . "Connection: close\r\n";

    my @sent = (
        $head . "Authorization: Bearer $PROBE_KEY\r\n"
              . "Authorization: Bearer $PROBE_KEY-2\r\n\r\n$body",
        $head . "Authorization: Bearer $PROBE_KEY" . ('x' x 9000)
              . "\r\n\r\n$body",
        $head . "Authorization: Bearer $PROBE_KEY\0x\r\n\r\n$body",
    );
    for my $bytes (@sent) {
        my $got = $t->raw($bytes, timeout => DifyTest::timeout(10));
        like $got, qr{\AHTTP/1\.1 4\d\d }, 'nginx refuses the request';
    }

    if ($o{h2}) {
        for my $value ("Bearer $PROBE_KEY\0x", "Bearer $PROBE_KEY\r") {
            my $h = $t->h2_connect;
            my $res = $h->request('PATCH', $path, headers => [
                'content-type' => 'application/json',
                'authorization' => $value ], body => $body);
            $h->close;
            ok !$res || !defined $res->{status} || $res->{status} >= 400,
                'nginx refuses the HTTP/2 request';
        }
    }

    # the lines are written before the answer: nothing to wait for
    return join '', map { -e $_ ? DifyTest::_slurp($_) : '' } @{$o{logs}};
}

# ------------------------------------------------------------------
# the standalone gateway

subtest 'conf/dify-status-standalone.conf' => sub {
    my $tpl = slurp("$TOP/conf/dify-status-standalone.conf");

    my ($head) = $tpl =~ /\A((?:#[^\n]*\n)+)/;
    my %documented = map { $_ => 1 } $head =~ /^#\s+(@[A-Z_]+@)\s/mg;
    (my $body = $tpl) =~ s/^\s*#[^\n]*\n//mg;
    my %used = map { $_ => 1 } $body =~ /(@[A-Z_]+@)/g;
    is join(' ', sort keys %used), join(' ', sort keys %documented),
        'the placeholders used are the ones documented';

    my %value = (
        '@MODULE@'      => '%%MODULE%%',
        '@LISTEN@'      => '127.0.0.1:%%PORT%%',
        '@DIFY_API@'    => '%%UPSTREAM%%',
        '@REDIS@'       => '%%REDIS%%',
        '@LIMIT_RATE@'  => '5r/m',
        '@LIMIT_BURST@' => '5',
    );

    (my $conf = $tpl) =~ s/(@[A-Z_]+@)/$value{$1} \/\/ $1/ge;
    unlike $conf, qr/@[A-Z_]+@/, 'every placeholder rendered';

    my $t = DifyTest->new;
    make_path($t->dir . '/logs');
    nginx_t_ok($t, $conf, 'standalone, as run-gateway renders it');

    # the other forms the header promises: a unix socket, a password,
    # "N r/s" with a space
    (my $c2 = $conf) =~ s{%%REDIS%%}{unix:/run/redis/redis.sock password=x}g;
    $c2 =~ s{rate=5r/m}{rate=100 r/s};
    nginx_t_ok($t, $c2, 'standalone, Redis on a unix socket, "100 r/s"');

    # without a resolver, a host name is resolved by nginx -t: one that
    # does not resolve is refused, with a reason
    (my $c3 = $conf) =~ s{%%REDIS%%}{redis.invalid:6379}g;
    my ($rc, $out) = $t->nginx_t(conf => $c3);
    isnt $rc, 0, 'nginx -t refuses a Redis host name that does not resolve';
    like $out, qr/host not found in "redis\.invalid:6379".*"resolver"/,
        '... and says why';

    # live, with an HTTP/2 listener added: nginx's own lines that quote
    # the Authorization header are below the shipped log level
    like $conf, qr/^error_log \S+ notice;$/m, 'the error log is at notice';
    (my $live = $conf) =~ s{listen 127\.0\.0\.1:%%PORT%%;}
        {listen 127.0.0.1:%%PORT%%;\n        listen 127.0.0.1:%%H2PORT%% http2;};
    $live =~ s{^pid \S+;}{pid %%DIR%%/nginx.pid;}m;
    $live =~ s{^(\s*)(load_module)}{daemon off;\n$1$2}m;
    $t->start_redis;
    $t->start_nginx(conf => $live);
    my $dir = $t->dir;
    my $logs = core_log_probes($t, h2 => 1, logs =>
        [ "$dir/logs/error.log", "$dir/logs/access.log" ]);
    unlike $logs, qr/\Q$PROBE_SECRET\E/,
        'no raw key in the error log or the access log';
    $t->done;

    # the same at "info" quotes the key: what the README warns against
    my $t2 = DifyTest->new;
    make_path($t2->dir . '/logs');
    (my $info = $live) =~ s{^error_log (\S+) notice;}{error_log $1 info;}m;
    $t2->start_redis;
    $t2->start_nginx(conf => $info);
    $dir = $t2->dir;
    $logs = core_log_probes($t2, h2 => 1, logs => [ "$dir/logs/error.log" ]);
    like $logs, qr/\Q$PROBE_SECRET\E/,
        'at info, nginx itself logs the raw key (hence notice)';
    $t2->done;
};


# ------------------------------------------------------------------
# the drop-in for Dify's docker deployment

my %snip = map { $_ => slurp("$DOCKER/$_") } qw(
    nginx.conf.template.main nginx.conf.template.http
    default.conf.template.v1 dify-status-metrics.conf
    docker-compose.override.yaml
);
$snip{Dockerfile} = slurp("$TOP/conf/docker/Dockerfile");

# the environment the nginx container gets from docker-compose.yaml
# (Dify's NGINX_* defaults) and from the override
my ($env_block) = $snip{'docker-compose.override.yaml'}
    =~ /^    environment:\n((?:      [^\n]*\n)+)/m;
my %override_env = map { $_ => 1 } ($env_block // '') =~ /^      ([A-Z_]+):/mg;

subtest 'docker snippets and the compose override agree' => sub {
    ok %override_env, 'the override sets environment variables';
    for my $f (qw(nginx.conf.template.http default.conf.template.v1)) {
        my @vars = $snip{$f} =~ /\$\{(\w+)\}/g;
        ok @vars, "$f uses \${...}";
        for my $v (@vars) {
            ok $override_env{$v}, "$f: \${$v} is set by the override";
        }
    }
    like $snip{'nginx.conf.template.main'},
        qr{^load_module (/usr/lib/nginx/modules/ngx_http_dify_status_module\.so);$}m,
        'load_module names the path of the image';
    like $snip{Dockerfile},
        qr{^COPY --from=build \S+/ngx_http_dify_status_module\.so\s+/usr/lib/nginx/modules/$}m,
        'the Dockerfile installs the module there';
    my ($tag) = $snip{'docker-compose.override.yaml'}
        =~ /^    image: nginx-dify-status:(\S+)$/m;
    my ($ver) = $snip{Dockerfile} =~ /^ARG NGINX_VERSION=(\S+)$/m;
    is $tag, $ver, 'the override runs the image conf/docker/Dockerfile '
        . 'builds by default (nginx-dify-status:VERSION)';
    for my $src ($snip{Dockerfile} =~ /^COPY (?!--from)(.+) \S+$/mg) {
        ok -e "$TOP/$_", "the Dockerfile's COPY source $_ exists"
            for split ' ', $src;
    }
    unlike $snip{'docker-compose.override.yaml'}, qr/^\s*entrypoint:/m,
        'Dify\'s own entrypoint: nothing is resolved at container start';
    like $snip{'docker-compose.override.yaml'},
        qr/^      DIFY_STATUS_REDIS: \$\{DIFY_STATUS_REDIS:-redis:6379\}$/m,
        'Redis by its service name by default';
    like $snip{'nginx.conf.template.http'},
        qr/^    resolver 127\.0\.0\.11 valid=10s ipv6=off;$/m,
        'resolved by nginx through Docker\'s DNS';
};

# Dify's entrypoint: envsubst "$(every variable of the environment)",
# which replaces $NAME and ${NAME} for those names only
sub envsubst {
    my ($text, $env) = @_;
    $text =~ s/\$\{(\w+)\}/exists $env->{$1} ? $env->{$1} : "\${$1}"/ge;
    $text =~ s/\$(\w+)/exists $env->{$1} ? $env->{$1} : "\$$1"/ge;
    return $text;
}

my $DNSMASQ = (grep { -x } qw(/usr/sbin/dnsmasq /usr/bin/dnsmasq))[0];

subtest 'Dify docker templates with the snippets' => sub {
    plan skip_all => 'dnsmasq not installed (Debian: dnsmasq-base)'
        unless $DNSMASQ;
    my $t = DifyTest->new;
    my $dir = $t->dir;
    my $password = 'difyai123456';
    make_path("$dir/conf.d");

    my %env = (
        HOME => '/root', PATH => '/usr/bin:/bin', HOSTNAME => 'nginx',
        NGINX_SERVER_NAME => '_', NGINX_PORT => 80,
        NGINX_WORKER_PROCESSES => 1, NGINX_KEEPALIVE_TIMEOUT => 65,
        NGINX_CLIENT_MAX_BODY_SIZE => '100M',
        NGINX_PROXY_READ_TIMEOUT => '3600s',
        NGINX_PROXY_SEND_TIMEOUT => '3600s',
        REDIS_PASSWORD => $password,
        DIFY_STATUS_RATE => '3r/h', DIFY_STATUS_BURST => 3,
        # the override's default: the compose service, by name
        DIFY_STATUS_REDIS => 'redis:' . $t->redis_port,
    );
    ok exists $env{$_}, "the test sets $_" for sort keys %override_env;

    # docker/nginx/nginx.conf.template, its structure, with test paths
    my $main_head = <<'EOF';
daemon off;
worker_processes  ${NGINX_WORKER_PROCESSES};
error_log  %%DIR%%/error.log notice;
pid        %%DIR%%/nginx.pid;

events {
    worker_connections  1024;
}

http {
    default_type  application/octet-stream;
    log_format  main  '$remote_addr - $remote_user [$time_local] "$request" '
                      '$status $body_bytes_sent "$http_referer" '
                      '"$http_user_agent" "$http_x_forwarded_for"';
    access_log  %%DIR%%/access.log  main;
    client_body_temp_path %%DIR%%/tmp/client_body;
    proxy_temp_path %%DIR%%/tmp/proxy;
    fastcgi_temp_path %%DIR%%/tmp/fastcgi;
    uwsgi_temp_path %%DIR%%/tmp/uwsgi;
    scgi_temp_path %%DIR%%/tmp/scgi;
    sendfile        on;
    keepalive_timeout  ${NGINX_KEEPALIVE_TIMEOUT};
    client_max_body_size ${NGINX_CLIENT_MAX_BODY_SIZE};

EOF
    my $main = envsubst($snip{'nginx.conf.template.main'} . $main_head
                        . $snip{'nginx.conf.template.http'}
                        . "    include %%DIR%%/conf.d/*.conf;\n}\n", \%env);
    $main =~ s{/usr/lib/nginx/modules/ngx_http_dify_status_module\.so}
              {%%MODULE%%};

    # docker/nginx/conf.d/default.conf.template and proxy.conf.template
    my $upstream = '127.0.0.1:' . $t->upstream_port;
    my $default_head = <<'EOF';
server {
    listen 127.0.0.1:%%PORT%%;
    server_name ${NGINX_SERVER_NAME};

    location /console/api {
      proxy_pass http://api:5001;
      include %%DIR%%/proxy.conf;
    }

    location /v1 {
      proxy_pass http://api:5001;
      include %%DIR%%/proxy.conf;
EOF
    my $default = envsubst($default_head . $snip{'default.conf.template.v1'}
                           . "    }\n}\n", \%env);
    my $proxy = envsubst(<<'EOF', \%env);
proxy_set_header Host $host;
proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
proxy_set_header X-Forwarded-Proto $scheme;
proxy_set_header X-Forwarded-Port $server_port;
proxy_http_version 1.1;
proxy_buffering off;
proxy_read_timeout ${NGINX_PROXY_READ_TIMEOUT};
proxy_send_timeout ${NGINX_PROXY_SEND_TIMEOUT};
EOF
    (my $metrics = $snip{'dify-status-metrics.conf'})
        =~ s/listen 9145;/listen 127.0.0.1:%%PORT2%%;/;

    my $port = $t->port('PORT');
    my $port2 = $t->port('PORT2');
    for ($default, $proxy, $metrics, $main) {
        s{/var/log/nginx/}{%%DIR%%/}g;
    }
    for ($default, $proxy, $metrics) {
        s/api:5001/$upstream/g;
        s/%%DIR%%/$dir/g;
        s/%%PORT%%/$port/g;
        s/%%PORT2%%/$port2/g;
    }
    for ($main, $default, $proxy, $metrics) {
        unlike $_, qr/\$\{\w+\}/, 'no ${VAR} left after the entrypoint';
        unlike $_, qr/api:5001/, 'api:5001 replaced';
    }
    like $main, qr/dify_status_redis redis:\d+ "password=\Q$password\E"/,
        'the Redis address and password rendered';

    # Docker's DNS server is a dnsmasq here, answering for "redis"
    my $dns_port = $t->port('DNS');
    like $main, qr/resolver 127\.0\.0\.11 /, 'Docker\'s resolver';
    $main =~ s/resolver 127\.0\.0\.11 /resolver 127.0.0.1:$dns_port /;
    spew("$dir/dns.hosts", "127.0.0.1 redis\n");
    $t->_spawn('dnsmasq',
        [ $DNSMASQ, '--keep-in-foreground', "--port=$dns_port",
          '--listen-address=127.0.0.1', '--bind-interfaces', '--no-resolv',
          '--no-hosts', "--addn-hosts=$dir/dns.hosts", '--local-ttl=1',
          '--conf-file=/dev/null', '--pid-file=', '--user=root',
          "--log-facility=$dir/dnsmasq.log" ],
        output => "$dir/dnsmasq.stderr");
    like $main, qr/'key=\$dify_status_key /, 'nginx variables left alone';

    spew("$dir/conf.d/default.conf", $default);
    spew("$dir/conf.d/dify-status-metrics.conf", $metrics);
    spew("$dir/proxy.conf", $proxy);

    nginx_t_ok($t, $main, 'Dify docker templates with the snippets');

    # and live: the module answers, valid requests reach "api:5001"

    $t->start_redis(password => $password);
    $t->start_nginx(conf => $main);

    my $key = fresh_key('docker');
    my $r;
    for (1 .. 100) {
        $r = patch($t, fresh_key('warm'));
        last if $r->{status} == 200;
        Time::HiRes::sleep(0.05);
    }
    is $r->{status}, 200, 'a valid PATCH reaches the upstream';
    $t->upstream_clear;

    $t->reject_ok(patch($t, $key, dataset => 'nope'), 404, 'not_found',
                  'Dataset not found.', 'the module answers on /v1');

    my @s = map { patch($t, $key)->{status} } 1 .. 4;
    is "@s", '200 200 200 429',
        'the limit from DIFY_STATUS_RATE and DIFY_STATUS_BURST';
    $t->upstream_clear;

    $r = $t->request('GET', '/console/api/setup');
    is $r->{status}, 200, 'other locations untouched';
    my @up = $t->upstream_requests;
    is scalar(@up), 1, '... and proxied';
    is $up[0]{uri}, '/console/api/setup', '... as it came';

    $r = $t->request('GET', '/metrics', port => $port2);
    is $r->{status}, 200, 'metrics on their own port';
    like $r->{body}, qr/^dify_status_requests_checked_total \d+$/m,
        '... in Prometheus text';

    like DifyTest::_slurp("$dir/access.log"),
        qr/ 429 dify=limited action=enable /,
        'the dify_status log format in the access log';

    my $logs = core_log_probes($t, logs =>
        [ "$dir/error.log", "$dir/access.log" ]);
    unlike $logs, qr/\Q$PROBE_SECRET\E/,
        "no raw key in the logs at Dify's own level (notice)";

    $t->done;
};

done_testing;
