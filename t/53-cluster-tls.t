#!/usr/bin/perl

# Redis Cluster over TLS only: three primaries and three replicas on
# loopback with "port 0" (no plain port), tls-port 27201-27206, their
# buses on 27211-27216 over TLS (tls-cluster yes, tls-replication yes),
# made once for the file with redis-cli --tls --cluster create.  The
# certificates are made here with openssl, as t/19-redis-tls.t makes
# them; every node's certificate names "redis.test" only (no IP
# address), so nodes reported by IP need dify_status_redis_ssl_name.
#
#   - keys on every primary, decided there over TLS: each key's state
#     on its primary, exact counts on each, no MOVED, commands and
#     connections counted per node, no TLS failure;
#   - a slot with state migrated to another primary (MIGRATE over the
#     cluster's TLS, SETSLOT NODE): the next requests get MOVED, follow
#     it over TLS to the new owner, counted; the counts go on exactly;
#   - a wrong CA: every request takes the fallback, logged once per
#     worker and node, counted in dify_status_redis_tls_failures_total,
#     never connected;
#   - no dify_status_redis_ssl_name: the node's IP is checked against a
#     certificate that names redis.test, refused, the fallback, logged;
#   - the admin tool with --cluster --tls --cacert, on a node that does
#     not hold the key;
#   - every node's certificate replaced at run time by one naming
#     127.0.0.1 too: no dify_status_redis_ssl_name needed, exact counts.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use File::Temp qw(tempdir);
use IPC::Open3 qw(open3);
use Time::HiRes qw(sleep time);

use DifyTest;
use DifyLimit qw(fresh_key tat_key limit_key patch wait_for);

DifyTest::require_module();

plan skip_all => 'redis-server and redis-cli needed'
    unless -x '/usr/bin/redis-server' && -x '/usr/bin/redis-cli';
plan skip_all => 'redis-server or redis-cli without TLS'
    unless `redis-cli --help 2>&1` =~ /--tls/;
plan skip_all => 'IO::Socket::SSL needed'
    unless eval { require IO::Socket::SSL; 1 };

my @PORTS = (27201 .. 27206);
my $SLOW = DifyTest->valgrind ? DifyTest::slow() : 1;
my $TIMEOUT = $SLOW * 2;
my $WORKERS = DifyTest->valgrind ? 1 : 2;

my $t = DifyTest->new;


# ------------------------------------------------------------------
# the certificates

my $pki = tempdir('dify-cltls-XXXXXX', TMPDIR => 1, CLEANUP => 1);

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
# one certificate for every node, a name only (no IP SAN), usable as the
# client certificate of the cluster bus too
cert('server', 'redis.test', 'ca', 2,
     "subjectAltName=DNS:redis.test\n"
     . 'extendedKeyUsage=serverAuth,clientAuth');
# the same with the nodes' IP address, put in place at the end
cert('server-ip', 'redis.test', 'ca', 2,
     "subjectAltName=DNS:redis.test,IP:127.0.0.1\n"
     . 'extendedKeyUsage=serverAuth,clientAuth');


# ------------------------------------------------------------------
# a small RESP client over TLS for any node

sub rconn {
    my ($port, $timeout) = @_;
    my $s = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => $timeout,
        SSL_ca_file => "$pki/ca.crt", SSL_verifycn_scheme => 'none',
        SSL_hostname => 'redis.test', SSL_verifycn_name => 'redis.test')
        or return undef;
    binmode $s;
    return DifyTest::Conn->_wrap($s, $timeout);
}

sub rcmd {
    my ($port, @cmd) = @_;
    my $c = rconn($port, 5)
        or return { error => "connect: $! " . IO::Socket::SSL::errstr() };
    $c->send(DifyTest::_resp_cmd(@cmd));
    my $r = eval { $c->_resp_reply } // { error => $@ };
    $c->{sock}->close(SSL_no_shutdown => 1);
    return $r;
}

# id, port, role and master id of every node, as one node sees them
sub nodes {
    my ($port) = @_;
    my $txt = rcmd($port, 'CLUSTER', 'NODES');
    return () if ref $txt;
    my @n;
    for (split /\n/, $txt) {
        my ($id, $addr, $flags, $master) = split ' ';
        next unless $addr;
        my ($p) = $addr =~ /:(\d+)/;
        push @n, { id => $id, port => $p, master => $master,
                   role => ($flags =~ /master/ ? 'master' : 'replica') };
    }
    return @n;
}

# the port of the primary of a slot, as that node's CLUSTER SLOTS says
sub owner {
    my ($slot, $ask) = @_;
    my $map = rcmd($ask // $PORTS[0], 'CLUSTER', 'SLOTS');
    return undef if ref $map ne 'ARRAY';
    for my $r (@$map) {
        return $r->[2][1] if $slot >= $r->[0] && $slot <= $r->[1];
    }
    return undef;
}

sub keyslot { rcmd($PORTS[0], 'CLUSTER', 'KEYSLOT', $_[0]) }

# $n fresh keys whose slot is on the primary $port
sub keys_on {
    my ($port, $n, $tag) = @_;
    my $map = rcmd($PORTS[0], 'CLUSTER', 'SLOTS');
    return () if ref $map ne 'ARRAY';
    my @k;
    for (1 .. 500) {
        my $k = fresh_key($tag);
        my $slot = keyslot(tat_key($k));
        for my $r (@$map) {
            next unless $slot >= $r->[0] && $slot <= $r->[1];
            push @k, $k if $r->[2][1] == $port;
        }
        last if @k == $n;
    }
    return @k;
}

sub metric {
    my ($tt, $name, $label) = @_;
    my $r = $tt->request('GET', '/metrics');
    my $re = defined $label ? qr/^\Q$name\E\{\Q$label\E\} (\d+)$/m
                            : qr/^\Q$name\E (\d+)$/m;
    return $r->{body} =~ $re ? $1 : undef;
}

sub outcome { $_[0]{headers}{'x-dify-status'} // "status $_[0]{status}" }


# ------------------------------------------------------------------
# the cluster, TLS only, once for the file

my $cdir = $t->dir . '/cluster';
mkdir $cdir or die "mkdir: $!";

my @TLS = ('--tls-cert-file', "$pki/server.crt",
           '--tls-key-file', "$pki/server.key",
           '--tls-ca-cert-file', "$pki/ca.crt",
           '--tls-auth-clients', 'no',
           '--tls-cluster', 'yes', '--tls-replication', 'yes');

for my $p (@PORTS) {
    mkdir "$cdir/$p" or die "mkdir: $!";
    $t->_spawn("cluster$p",
        [ 'redis-server', '--port', 0, '--tls-port', $p,
          '--bind', '127.0.0.1', @TLS,
          '--cluster-enabled', 'yes',
          '--cluster-config-file', "$cdir/$p/nodes.conf",
          '--cluster-port', $p + 10,
          '--cluster-node-timeout', '1000',
          '--cluster-require-full-coverage', 'no',
          '--save', '', '--appendonly', 'no', '--dir', "$cdir/$p",
          '--daemonize', 'no', '--logfile', "$cdir/$p/redis.log" ],
        output => "$cdir/$p/stderr");
}

for my $p (@PORTS) {
    wait_for(DifyTest::timeout(20), sub { (rcmd($p, 'PING') // '') eq 'PONG' })
        or BAIL_OUT("redis-server on $p did not start (TLS): "
                    . DifyTest::_slurp("$cdir/$p/redis.log"));
}

my @CLI_TLS = ('--tls', '--cacert', "$pki/ca.crt");

{
    my ($rc, $out) = $t->_run(
        [ 'redis-cli', @CLI_TLS, '--cluster', 'create',
          (map { "127.0.0.1:$_" } @PORTS),
          '--cluster-replicas', '1', '--cluster-yes' ],
        timeout => DifyTest::timeout(60));
    is $rc, 0, 'redis-cli --tls --cluster create' or diag $out;
}

ok wait_for(DifyTest::timeout(30), sub {
    for my $p (@PORTS) {
        my $info = rcmd($p, 'CLUSTER', 'INFO');
        return 0 if ref $info || $info !~ /cluster_state:ok/
                    || $info !~ /cluster_slots_assigned:16384/
                    || $info !~ /cluster_known_nodes:6/;
    }
    my @n = nodes($PORTS[0]);
    return 3 == grep { $_->{role} eq 'master' } @n;
}), 'the TLS cluster is up: 3 primaries, 3 replicas, every slot assigned';

my @PRIMARIES = sort { $a <=> $b }
                map { $_->{port} } grep { $_->{role} eq 'master' }
                nodes($PORTS[0]);
is scalar(@PRIMARIES), 3, "three primaries: @PRIMARIES";

# the map a TLS client reads names the TLS ports
{
    my $map = rcmd($PRIMARIES[0], 'CLUSTER', 'SLOTS');
    my %ports = map { $_->[2][1] => 1 } @{ ref $map eq 'ARRAY' ? $map : [] };
    is_deeply [ sort keys %ports ], [ map { "$_" } @PRIMARIES ],
        'CLUSTER SLOTS names the primaries\' TLS ports';
}

# ------------------------------------------------------------------
# nginx

my $SEEDS = "127.0.0.1:$PRIMARIES[0] 127.0.0.1:$PRIMARIES[1]";
my $TRUST = "dify_status_redis_ssl_trusted_certificate $pki/ca.crt;";
my $NAME = 'dify_status_redis_ssl_name redis.test;';

sub http_conf {
    my ($ssl) = @_;
    return "
    dify_status_redis $SEEDS cluster ssl timeout=${TIMEOUT}s
                      connect_timeout=" . 1000 * $SLOW . "ms;
    $ssl
    dify_status_redis_fallback deny;

    server {
        listen 127.0.0.1:%%PORT%%;
        add_header X-Dify-Status \$dify_status always;
        location = /metrics { dify_status_metrics; }
        location /v1/ {
            dify_status on;
            dify_status_limit rate=5 r/h;
            proxy_pass http://upstream;
        }
    }
";
}

$t->start_nginx(workers => $WORKERS, http => http_conf("$TRUST $NAME"));

ok wait_for(DifyTest::timeout(20), sub {
    for (1 .. 6) {
        return 0 unless outcome(patch($t, fresh_key('warm'))) eq 'passed';
    }
    return 1;
}), 'decided by the cluster over TLS';


subtest 'keys of every primary over TLS: their state there, exact counts'
=> sub {
    my $moved0 = metric($t, 'dify_status_redis_moved_total');

    for my $p (@PRIMARIES) {
        my @k = keys_on($p, 2, "p$p");
        is scalar(@k), 2, "two keys on $p";

        for my $k (@k) {
            is keyslot(tat_key($k)), keyslot(limit_key($k)),
               'both keys of one limit key in one slot';
            my @st = map { patch($t, $k)->{status} } 1 .. 8;
            is "@st", '200 200 200 200 200 429 429 429',
               "rate=5 r/h on $p: exactly 5 of 8";
            is rcmd($p, 'EXISTS', tat_key($k)), 1, "the state is on $p";
        }
    }

    is metric($t, 'dify_status_redis_moved_total'), $moved0,
       'no MOVED: every command went to its slot\'s primary';

    for my $p (@PRIMARIES) {
        my $n = metric($t, 'dify_status_redis_node_commands_total',
                       "node=\"127.0.0.1:$p\"");
        ok defined $n && $n > 0, "commands counted for 127.0.0.1:$p";
        my $up = metric($t, 'dify_status_redis_connections_up',
                        "node=\"127.0.0.1:$p\"");
        ok defined $up && $up >= 1, "a TLS connection up to 127.0.0.1:$p";
    }

    is metric($t, 'dify_status_redis_tls_failures_total'), 0,
       'no TLS failure';
};


subtest 'a slot moved: MOVED followed over TLS, counts exact' => sub {
    my ($src, $dst) = @PRIMARIES[0, 2];
    my ($k) = keys_on($src, 1, 'mv');
    ok $k, "a key on $src";

    # its state on $src: 3 of its 5
    my @st = map { patch($t, $k)->{status} } 1 .. 3;
    is "@st", '200 200 200', 'three requests on the old owner';

    my $slot = keyslot(tat_key($k));
    my ($sid) = map { $_->{id} } grep { $_->{port} == $src } nodes($src);
    my ($did) = map { $_->{id} } grep { $_->{port} == $dst } nodes($src);
    my $moved0 = metric($t, 'dify_status_redis_moved_total');

    # the keys go over the cluster's own TLS (MIGRATE), then the slot
    is rcmd($dst, 'CLUSTER', 'SETSLOT', $slot, 'IMPORTING', $sid), 'OK',
       'target importing';
    is rcmd($src, 'CLUSTER', 'SETSLOT', $slot, 'MIGRATING', $did), 'OK',
       'source migrating';
    my $ks = rcmd($src, 'CLUSTER', 'GETKEYSINSLOT', $slot, 100);
    ok ref $ks eq 'ARRAY' && @$ks >= 1, 'the slot has keys';
    is rcmd($src, 'MIGRATE', '127.0.0.1', $dst, '', 0, 5000, 'KEYS', @$ks),
       'OK', 'MIGRATE over TLS';
    for my $p ($dst, $src, grep { $_ != $src && $_ != $dst } @PRIMARIES) {
        is rcmd($p, 'CLUSTER', 'SETSLOT', $slot, 'NODE', $did), 'OK',
           "SETSLOT NODE on $p";
    }

    # at once, before the workers' maps are read again (every 5 s): a
    # request to the old owner, MOVED, sent on to $dst
    @st = map { patch($t, $k)->{status} } 1 .. 5;
    is "@st", '200 200 429 429 429',
       'the next 5: 2 passed, 3 limited (the state moved with the slot)';
    cmp_ok metric($t, 'dify_status_redis_moved_total'), '>', $moved0,
       'MOVED counted';
    is rcmd($dst, 'EXISTS', tat_key($k)), 1, "the state is on $dst";
    my $r = rcmd($src, 'EXISTS', tat_key($k));
    like ref $r ? $r->{error} : $r, qr/^MOVED $slot 127\.0\.0\.1:$dst$/,
       "$src sends it on to $dst";

    my $n = metric($t, 'dify_status_redis_node_commands_total',
                   "node=\"127.0.0.1:$dst\"");
    ok $n, "commands to $dst: $n";
    is metric($t, 'dify_status_redis_tls_failures_total'), 0,
       'no TLS failure';
    unlike $t->error_log, qr/\[(?:alert|crit|emerg)\]/, 'no alert';
};


# ------------------------------------------------------------------
# refused: every request takes the fallback, logged at most once per
# worker and node

sub refused_ok {
    my ($tt, $name, $re) = @_;
    my @seen;
    my $deadline = time + DifyTest::timeout(1.5);
    while (time < $deadline) {
        push @seen, outcome(patch($tt, fresh_key('tls')));
        sleep 0.05;
    }
    ok @seen > 5, "$name: " . scalar(@seen) . ' requests';
    is_deeply [ grep { $_ ne 'fallback_denied' } @seen ], [],
        "$name: every request takes the fallback";
    my @l = grep { /\[error\].*$re/ } split /\n/, $tt->error_log;
    cmp_ok scalar(@l), '>=', 1, "$name: logged";
    my %by;
    for (@l) {
        my ($pid) = /\[error\] (\d+)#/;
        my ($node) = /redis "([^"]+)"/;
        $by{"$pid $node"}++ if defined $pid && defined $node;
    }
    is_deeply [ grep { $by{$_} > 1 } sort keys %by ], [],
        "$name: once per worker and node (" . scalar(@l) . ' lines)';
    note $l[0] // 'nothing logged';
    unlike $tt->error_log, qr/redis "[^"]+" connected/, "$name: never up";
    cmp_ok metric($tt, 'dify_status_redis_tls_failures_total'), '>=', 1,
        "$name: counted as a TLS failure";
}

subtest 'a wrong CA: the fallback, logged once' => sub {
    my $t2 = DifyTest->new;
    $t2->start_nginx(workers => $WORKERS, http => http_conf(
        "dify_status_redis_ssl_trusted_certificate $pki/other-ca.crt; $NAME"));
    refused_ok($t2, 'a wrong CA',
               qr/TLS certificate verify error: \(\d+:[^)]+\)/);
    $t2->done;
};

subtest 'no dify_status_redis_ssl_name: the IP is not in the certificate'
=> sub {
    my $t2 = DifyTest->new;
    $t2->start_nginx(workers => $WORKERS, http => http_conf($TRUST));
    refused_ok($t2, 'the node\'s IP as the name',
               qr/TLS certificate does not match "127\.0\.0\.1"/);
    $t2->done;
};


# ------------------------------------------------------------------
# tools/dify-status-limit --cluster --tls --cacert, pointed at a node
# that does not hold the key

my $TOOL = "$FindBin::Bin/../tools/dify-status-limit";

sub tool {
    my ($port, $stdin, @args) = @_;
    local $ENV{DIFY_REDIS_HOST} = '127.0.0.1';
    local $ENV{DIFY_REDIS_PORT} = $port;
    local $SIG{PIPE} = 'IGNORE';
    my $pid = open3(my $in, my $out, undef, 'bash', $TOOL, @args);
    print $in $stdin if defined $stdin;
    close $in;
    my $output = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    return ($? >> 8, $output);
}

subtest 'the admin tool with --cluster --tls --cacert' => sub {
    my ($home, $other) = @PRIMARIES[1, 0];
    my ($k) = keys_on($home, 1, 'tool');
    my @tls = ('--tls', '--cacert', "$pki/ca.crt");
    my ($rc, $out);

    ($rc, $out) = tool($other, "$k\n", '--cluster', 'show', '-');
    is $rc, 1, 'without --tls: refused' or diag $out;

    ($rc, $out) = tool($other, "$k\n", '--cluster', @tls,
                       'set', '-', 'rate=3r/h');
    is $rc, 0, 'set rate=3r/h' or diag $out;
    is rcmd($home, 'HGET', limit_key($k), 'rate'), '3r/h',
       "the override is on the key's node, $home";

    my @st = map { patch($t, $k)->{status} } 1 .. 4;
    is "@st", '200 200 200 429', 'nginx applies it: exactly 3 of 4';

    ($rc, $out) = tool($other, "$k\n", '-c', @tls, 'show', '-');
    is $rc, 0, 'show' or diag $out;
    like $out, qr/rate:\s+3r\/h/, 'show: the rate';

    ($rc, $out) = tool($other, "$k\n", '-c', @tls, 'state', '-');
    is $rc, 0, 'state' or diag $out;

    ($rc, $out) = tool($other, "$k\n", '-c', @tls, 'reset', '-');
    is $rc, 0, 'reset' or diag $out;
    is rcmd($home, 'EXISTS', tat_key($k)), 0, 'the state is gone';

    my ($kb) = keys_on($home, 1, 'toolb');
    ($rc, $out) = tool($other, "$kb\n", '-c', @tls, 'block', '-');
    is $rc, 0, 'block' or diag $out;
    is patch($t, $kb)->{status}, 403, 'blocked: 403';
    ($rc, $out) = tool($other, "$kb\n", '-c', @tls, 'unblock', '-');
    is $rc, 0, 'unblock' or diag $out;
    is patch($t, $kb)->{status}, 200, 'unblocked: 200';

    {
        local $ENV{DIFY_REDIS_TLS} = 1;
        local $ENV{DIFY_REDIS_CACERT} = "$pki/ca.crt";
        ($rc, $out) = tool($other, "$k\n", '-c', 'remove', '-');
        is $rc, 0, 'DIFY_REDIS_TLS, DIFY_REDIS_CACERT: remove' or diag $out;
    }
    is rcmd($home, 'EXISTS', limit_key($k)), 0, 'the override is gone';
};


# last: every node's certificate replaced at run time by one that names
# 127.0.0.1 too (CONFIG SET tls-cert-file, for new connections)
subtest 'certificates naming the nodes\' IP: no ssl_name needed' => sub {
    for my $p (@PORTS) {
        is rcmd($p, 'CONFIG', 'SET', 'tls-cert-file', "$pki/server-ip.crt",
                'tls-key-file', "$pki/server-ip.key"), 'OK',
           "$p: the certificate with the IP";
    }
    my $t2 = DifyTest->new;
    $t2->start_nginx(workers => $WORKERS, http => http_conf($TRUST));
    ok wait_for(DifyTest::timeout(10), sub {
        outcome(patch($t2, fresh_key('ip'))) eq 'passed';
    }), 'decided by the cluster';
    for my $p (@PRIMARIES) {
        my ($k) = keys_on($p, 1, "ip$p");
        my @st = map { patch($t2, $k)->{status} } 1 .. 7;
        is "@st", '200 200 200 200 200 429 429',
           "exact on 127.0.0.1:$p, checked against its IP";
    }
    is metric($t2, 'dify_status_redis_tls_failures_total'), 0,
       'no TLS failure';
    $t2->done;
};


unlike $t->error_log, qr/\[(?:alert|crit|emerg)\]/, 'no alert in the log';
$t->done;

done_testing;
