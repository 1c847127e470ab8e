#!/usr/bin/perl
#
# Redis over TLS: a real redis-server with --tls-port, and certificates
# made here with openssl (a CA, another CA, a server certificate for
# "redis.test", an expired one, a client certificate):
#
#   - verification on and passing: requests decided by Redis; the TLS
#     session is reused when the connection is made again;
#   - a wrong CA, a wrong name, an expired certificate: each refused,
#     logged once per worker with OpenSSL's reason, counted in
#     dify_status_redis_tls_failures_total, the fallback taken;
#   - mutual TLS required by Redis: refused without a client certificate,
#     decided by Redis with one;
#   - plain TCP to a TLS port, and TLS to a plain port: the fallback,
#     a clean failure (no alert, no crash), logged once.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use File::Temp qw(tempdir);
use DifyTest;
use DifyLimit qw(fresh_key tat_key limit_key patch concurrent wait_for);
use IPC::Open3 qw(open3);

DifyTest::require_module();

my $VG = DifyTest->valgrind;
my $SLOW = $VG ? DifyTest::slow() : 1;
my $WORKERS = $VG ? 1 : 2;


# ------------------------------------------------------------------
# the certificates

my $pki = tempdir('dify-tls-XXXXXX', TMPDIR => 1, CLEANUP => 1);

sub openssl {
    my $cmd = join ' ', 'openssl', @_, '2>&1';
    my $out = `$cmd`;
    die "openssl @_:\n$out" if $?;
    return $out;
}

sub ca {
    my ($name) = @_;
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes',
            '-keyout', "$pki/$name.key", '-out', "$pki/$name.crt",
            '-days', 2, '-subj', "'/CN=$name'");
}

sub cert {
    my ($name, $cn, $ca, $days, $ext) = @_;
    open my $fh, '>', "$pki/$name.ext" or die $!;
    print $fh "$ext\n";
    close $fh;
    openssl('req', '-newkey', 'rsa:2048', '-nodes',
            '-keyout', "$pki/$name.key", '-out', "$pki/$name.csr",
            '-subj', "'/CN=$cn'");
    openssl('x509', '-req', '-in', "$pki/$name.csr", '-CA', "$pki/$ca.crt",
            '-CAkey', "$pki/$ca.key", '-CAcreateserial',
            '-out', "$pki/$name.crt", '-days', $days,
            '-extfile', "$pki/$name.ext");
}

ca('ca');
ca('other-ca');
cert('server', 'redis.test', 'ca', 2,
     'subjectAltName=DNS:redis.test,IP:127.0.0.1');
cert('expired', 'redis.test', 'ca', 0, 'subjectAltName=DNS:redis.test');
cert('client', 'gateway', 'ca', 2, 'extendedKeyUsage=clientAuth');
cert('elsewhere', 'other.test', 'ca', 2, 'subjectAltName=DNS:other.test');
sleep 1.1;      # "-days 0": not after now, so expired a second later

# ------------------------------------------------------------------

sub tls_redis {
    my ($t, $port, %o) = @_;
    my $crt = $o{cert} // 'server';
    my $dir = $t->dir;
    my $p = $t->_spawn('tls-redis',
        [ 'redis-server', '--port', 0, '--tls-port', $port,
          '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
          '--dir', $dir, '--daemonize', 'no',
          '--logfile', "$dir/tls-redis.log",
          '--tls-cert-file', "$pki/$crt.crt",
          '--tls-key-file', "$pki/$crt.key",
          '--tls-ca-cert-file', "$pki/ca.crt",
          '--tls-auth-clients', $o{mutual} ? 'yes' : 'no' ],
        output => "$dir/tls-redis.stderr");
    my $up = wait_for(DifyTest::timeout(10), sub {
        tls_cli($port, 'PING') eq 'PONG';
    });
    die "the TLS redis-server did not start:\n"
        . DifyTest::_slurp("$dir/tls-redis.log") unless $up;
    return $p;
}

sub tls_cli {
    my ($port, @cmd) = @_;
    my $out = `redis-cli --tls --cacert $pki/ca.crt --cert $pki/client.crt --key $pki/client.key --insecure -h 127.0.0.1 -p $port --raw @cmd 2>&1`;
    chomp $out;
    return $out;
}

sub http_conf {
    my ($redis, $ssl) = @_;
    return qq{
    dify_status_redis $redis timeout=} . 200 * $SLOW . q{ms connect_timeout=}
        . 1000 * $SLOW . qq{ms;
    $ssl
    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        location /v1/ {
            dify_status on;
            dify_status_limit rate=100 r/h;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }
        location = /metrics {
            dify_status_metrics;
        }
    }
};
}

sub outcome { $_[0]{headers}{'x-dify-status'} // "status $_[0]{status}" }

sub metric {
    my ($t, $name) = @_;
    my $r = $t->request('GET', '/metrics');
    return $r->{body} =~ /^dify_status_$name (\d+)$/m ? $1 : undef;
}

# decided by Redis within a while
sub decided_ok {
    my ($t, $name) = @_;
    my $key = wait_for(DifyTest::timeout(5), sub {
        my $k = fresh_key('tls');
        return outcome(patch($t, $k)) eq 'passed' ? $k : undef;
    });
    ok $key, "$name: decided by Redis";
    return $key;
}

# refused: every request takes the fallback for a while, logged once
sub refused_ok {
    my ($t, $name, $re) = @_;
    my @seen;
    my $deadline = time + DifyTest::timeout(1.5);
    while (time < $deadline) {
        push @seen, outcome(patch($t, fresh_key('tls')));
        sleep 0.05;
    }
    is_deeply [ grep { $_ ne 'fallback_denied' } @seen ], [],
        "$name: every request takes the fallback";
    my @l = grep { /\[error\].*$re/ } split /\n/, $t->error_log;
    cmp_ok scalar(@l), '>=', 1, "$name: logged";
    cmp_ok scalar(@l), '<=', $WORKERS,
        "$name: once per worker at most (" . scalar(@l) . ')';
    note $l[0] // 'nothing logged';
    unlike $t->error_log, qr/redis "[^"]+" connected/, "$name: never up";
}

my $TRUST = "dify_status_redis_ssl_trusted_certificate $pki/ca.crt;";

# ------------------------------------------------------------------
subtest 'verification on and passing, sessions reused' => sub {
    my $t = DifyTest->new(log_level => 'debug');
    my $port = $t->port('TLS');
    tls_redis($t, $port);
    $t->start_nginx(workers => $WORKERS, http => http_conf(
        "127.0.0.1:$port ssl",
        "$TRUST dify_status_redis_ssl_name redis.test;"));
    my $key = decided_ok($t, 'verified');
    is tls_cli($port, 'EXISTS', tat_key($key)), '1', 'the state is in Redis';
    is metric($t, 'redis_tls_failures_total'), 0, 'no TLS failure';

    # many commands at once, pipelined through TLS's buffer
    my $many = fresh_key('many');
    my @r = concurrent($t, 40, $many);
    is scalar(grep { outcome($_) eq 'passed' } @r), 40,
        '40 concurrent requests, all decided by Redis';
    is tls_cli($port, 'EXISTS', tat_key($many)), '1', '... in Redis';

    # the connections are made again: with the sessions saved
    like tls_cli($port, 'CLIENT', 'KILL', 'TYPE', 'normal'), qr/^\d+$/,
        'CLIENT KILL';
    decided_ok($t, 'after the connections were lost');
    like $t->error_log, qr/TLS up, session reused: 1/,
        'a TLS session was reused';
    $t->done;
};

subtest 'the address\'s host name is the default name' => sub {
    my $t = DifyTest->new;
    my $port = $t->port('TLS');
    tls_redis($t, $port);
    # the certificate names 127.0.0.1 among its IP addresses
    $t->start_nginx(workers => $WORKERS,
                    http => http_conf("127.0.0.1:$port ssl", $TRUST));
    decided_ok($t, 'an IP address checked against the IP SAN');
    $t->done;
};

my %refused = (
    'a wrong CA' => [ {}, "dify_status_redis_ssl_trusted_certificate "
                          . "$pki/other-ca.crt; "
                          . "dify_status_redis_ssl_name redis.test;",
                      qr/TLS certificate verify error: \(\d+:[^)]+\)/ ],
    'a wrong name' => [ {}, "$TRUST dify_status_redis_ssl_name other.test;",
                        qr/TLS certificate does not match "other\.test"/ ],
    'an expired certificate' => [ { cert => 'expired' },
                        "$TRUST dify_status_redis_ssl_name redis.test;",
                        qr/TLS certificate verify error: \(10:certificate has expired\)/ ],
    # default settings: no dify_status_redis_ssl_name, no CA file
    'the default name, a certificate for another' => [
                        { cert => 'elsewhere' }, $TRUST,
                        qr/TLS certificate does not match "127\.0\.0\.1"/ ],
    'the default CA store, a private CA' => [ {}, '',
                        qr/TLS certificate verify error: \(\d+:[^)]+\)/ ],
    'mutual TLS required, no client certificate' => [ { mutual => 1 },
                        "$TRUST dify_status_redis_ssl_name redis.test;",
                        qr/redis "[^"]+" unreachable: / ],
);

for my $name (sort keys %refused) {
    my ($ro, $ssl, $re) = @{ $refused{$name} };
    subtest $name => sub {
        my $t = DifyTest->new;
        my $port = $t->port('TLS');
        tls_redis($t, $port, %$ro);
        $t->start_nginx(workers => $WORKERS,
                        http => http_conf("127.0.0.1:$port ssl", $ssl));
        refused_ok($t, $name, $re);
        cmp_ok metric($t, 'redis_tls_failures_total'), '>=',
            $ro->{mutual} ? 0 : 1, 'counted as a TLS failure';
        $t->done;
    };
}

subtest 'mutual TLS required and satisfied' => sub {
    my $t = DifyTest->new;
    my $port = $t->port('TLS');
    tls_redis($t, $port, mutual => 1);
    $t->start_nginx(workers => $WORKERS, http => http_conf(
        "127.0.0.1:$port ssl",
        "$TRUST dify_status_redis_ssl_name redis.test;"
        . " dify_status_redis_ssl_certificate $pki/client.crt;"
        . " dify_status_redis_ssl_certificate_key $pki/client.key;"));
    my $key = decided_ok($t, 'with the client certificate');

    # the admin tool over the same TLS
    my @tls = ('--tls', '--cacert', "$pki/ca.crt",
               '--cert', "$pki/client.crt", '--key', "$pki/client.key");
    my ($rc, $out) = tool($port, "$key\n", @tls, 'set', '-', 'rate=3r/h');
    is $rc, 0, 'dify-status-limit --tls --cert --key: set' or diag $out;
    is tls_cli($port, 'HGET', limit_key($key), 'rate'), '3r/h',
       '... written over TLS';
    ($rc, $out) = tool($port, "$key\n", @tls, '--sni', 'redis.test',
                       'show', '-');
    is $rc, 0, '--sni: show' or diag $out;
    like $out, qr/rate:\s+3r\/h/, '... read over TLS';
    ($rc, $out) = tool($port, "$key\n", '--tls', '--cacert', "$pki/ca.crt",
                       'show', '-');
    is $rc, 1, 'no client certificate: refused by Redis';
    ($rc, $out) = tool($port, "$key\n", '--cacert', "$pki/other-ca.crt",
                       '--cert', "$pki/client.crt", '--key',
                       "$pki/client.key", 'show', '-');
    is $rc, 1, 'another CA: the certificate is refused';
    ($rc, $out) = tool($port, "$key\n", 'show', '-');
    is $rc, 1, 'plain TCP to the TLS port: a failure';
    $t->done;
};


sub tool {
    my ($port, $stdin, @args) = @_;
    local $ENV{DIFY_REDIS_HOST} = '127.0.0.1';
    local $ENV{DIFY_REDIS_PORT} = $port;
    local $SIG{PIPE} = 'IGNORE';
    my $pid = open3(my $in, my $out, undef, 'bash',
                    "$FindBin::Bin/../tools/dify-status-limit", @args);
    print $in $stdin if defined $stdin;
    close $in;
    my $output = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    return ($? >> 8, $output);
}

subtest 'plain TCP to a TLS port' => sub {
    my $t = DifyTest->new;
    my $port = $t->port('TLS');
    tls_redis($t, $port);
    $t->start_nginx(workers => $WORKERS,
                    http => http_conf("127.0.0.1:$port", ''));
    refused_ok($t, 'plain to TLS', qr/redis "[^"]+" unreachable: /);
    $t->done;
};

subtest 'TLS to a plain port' => sub {
    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(workers => $WORKERS, http => http_conf(
        '%%REDIS%% ssl', "$TRUST dify_status_redis_ssl_name redis.test;"));
    # Redis takes the ClientHello for the start of a command
    refused_ok($t, 'TLS to plain', qr/unreachable: TLS handshake: no answer/);
    cmp_ok metric($t, 'redis_tls_failures_total'), '>=', 1,
        'counted as a TLS failure';
    $t->done;
};

subtest 'configuration' => sub {
    my $t = DifyTest->new;
    my ($rc, $out) = $t->nginx_t(http => q{
        dify_status_redis 127.0.0.1:6380 ssl;
        dify_status_redis_ssl_certificate /nonexistent.crt;
    });
    isnt $rc, 0, 'a certificate without its key';
    like $out, qr/no "dify_status_redis_ssl_certificate_key"/, '... says so';

    ($rc, $out) = $t->nginx_t(http => q{
        dify_status_redis 127.0.0.1:6380 ssl;
    });
    is $rc, 0, 'ssl with the system\'s CA store' or diag $out;

    ($rc, $out) = $t->nginx_t(http => qq{
        dify_status_redis 127.0.0.1:6380 ssl;
        dify_status_redis_ssl_trusted_certificate $pki/nonexistent.crt;
    });
    isnt $rc, 0, 'a trusted certificate that does not exist';
    $t->done;
};

done_testing;
