#!/usr/bin/perl
#
# Redis Sentinel (dify_status_redis ... sentinel=name) against a real
# topology on loopback, started once for the file: a primary and a
# replica (requirepass, masterauth), three Sentinels (redis-sentinel, or
# redis-server --sentinel; their own requirepass; quorum 2,
# down-after-milliseconds 500, failover-timeout 1000), ports 26380-26384.
#
# - exact counts on the primary the Sentinels name;
# - SENTINEL FAILOVER while traffic runs: every answer a 200 or the
#   "deny" fallback's 503, the module on the new primary (its INFO
#   commandstats count the script's calls) within a second of the
#   Sentinels naming it, the failover counted in the metrics, the
#   script loaded there (no NOSCRIPT retry needed), exact counts again
#   (state replicated before the failover carried over);
# - kill -9 of the primary while traffic runs: the same;
# - a primary demoted by hand (REPLICAOF, clients kept): READONLY takes
#   the fallback and the workers ask the Sentinels again;
# - the admin tool finds the primary through the Sentinels (the first
#   listed down), refuses a wrong name or password clearly;
# - a Sentinel down among the three (the first listed): the next is
#   asked; a wrong Sentinel password and a wrong service name: a clear
#   error log line and the fallback;
# - TLS: a TLS-only primary and Sentinel (ports 26386-26387), verified;
#   the module and the admin tool through it;
# - the directive's configuration errors (nginx -t).
#
# Rates are per hour so that refill during the test is far below one
# unit; the fallback is "deny", so that a request Redis did not decide
# shows as a 503, never as a silent pass that would make a count look
# right.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use IO::Socket::INET;
use IPC::Open3 ();
use POSIX ();
use Test::More;
use Time::HiRes qw(time sleep);
use DifyTest qw(uuid route);
use DifyLimit qw(fresh_key patch wait_for);

DifyTest::require_module();

my @SENTINEL_BIN = -x '/usr/bin/redis-sentinel' ? ('/usr/bin/redis-sentinel')
                 : ('redis-server');
my @SENTINEL_ARG = $SENTINEL_BIN[0] =~ /redis-sentinel$/ ? ()
                 : ('--sentinel');

my ($P1, $P2) = (26380, 26381);
my @SP = (26382, 26383, 26384);
my $DEAD_SP = 26385;                # nothing listens there
my $DATA_PW = 'data-secret-26';
my $SENT_PW = 'sentinel-secret-26';
my $NAME = 'difymaster';

my $REDIS_TIMEOUT = (DifyTest->valgrind ? DifyTest::slow() : 1) * 2;

my $t = DifyTest->new;
my $DIR = $t->dir;

# ------------------------------------------------------------------
# the topology

sub cli {
    my ($port, $pw, @args) = @_;
    my ($rc, $out) = $t->_run(
        [ 'redis-cli', '-h', '127.0.0.1', '-p', $port,
          (defined $pw ? ('-a', $pw, '--no-auth-warning') : ()),
          '--raw', @args ],
        timeout => DifyTest::timeout(10));
    $out =~ s/\n\z//;
    return $out;
}

sub data { my ($port, @args) = @_; return cli($port, $DATA_PW, @args) }
sub sent { my ($port, @args) = @_; return cli($port, $SENT_PW, @args) }

sub start_data {
    my ($port, $replicaof) = @_;
    mkdir "$DIR/r$port";
    $t->_spawn("redis$port",
        [ 'redis-server', '--port', $port, '--bind', '127.0.0.1',
          '--save', '', '--appendonly', 'no', '--dir', "$DIR/r$port",
          '--daemonize', 'no', '--logfile', "$DIR/redis$port.log",
          '--requirepass', $DATA_PW, '--masterauth', $DATA_PW,
          '--repl-diskless-sync', 'yes', '--repl-diskless-sync-delay', '0',
          ($replicaof ? ('--replicaof', '127.0.0.1', $replicaof) : ()) ],
        output => "$DIR/redis$port.stderr");
    wait_for(DifyTest::timeout(10), sub { data($port, 'PING') eq 'PONG' })
        or die "redis on $port did not start\n";
}

sub start_sentinel {
    my ($port) = @_;
    my $conf = "$DIR/sentinel$port.conf";
    open my $fh, '>', $conf or die "$conf: $!";
    print $fh <<"EOF";
port $port
bind 127.0.0.1
daemonize no
dir $DIR
logfile $DIR/sentinel$port.log
requirepass $SENT_PW
sentinel monitor $NAME 127.0.0.1 $P1 2
sentinel auth-pass $NAME $DATA_PW
sentinel down-after-milliseconds $NAME 500
sentinel failover-timeout $NAME 1000
sentinel parallel-syncs $NAME 1
EOF
    close $fh;
    $t->_spawn("sentinel$port", [ @SENTINEL_BIN, $conf, @SENTINEL_ARG ],
               output => "$DIR/sentinel$port.stderr");
    wait_for(DifyTest::timeout(10), sub { sent($port, 'PING') eq 'PONG' })
        or die "sentinel on $port did not start\n";
}

sub named {
    my ($port) = @_;
    my $out = sent($port // $SP[0], 'SENTINEL', 'get-master-addr-by-name',
                   $NAME);
    my ($h, $p) = split /\n/, $out;
    return $p // '';
}

# every Sentinel names $port, sees the other data node as its replica,
# and knows the other Sentinels (so that a quorum can be reached)
sub settled {
    my ($primary, $replica) = @_;
    return wait_for(DifyTest::timeout(30), sub {
        for my $s (@SP) {
            return 0 unless named($s) eq $primary;
            my $info = sent($s, 'SENTINEL', 'master', $NAME);
            my %m = split /\n/, $info;
            return 0 unless ($m{'num-other-sentinels'} // 0) == 2;
            return 0 unless ($m{'num-slaves'} // 0) >= 1;
            return 0 if ($m{flags} // '') =~ /down|failover/;
        }
        if (defined $replica) {
            my $r = data($replica, 'INFO', 'replication');
            return 0 unless $r =~ /master_port:$primary\b/
                         && $r =~ /master_link_status:up/;
        }
        return 1;
    });
}

sub evalsha_calls {
    my ($port) = @_;
    my $s = data($port, 'INFO', 'commandstats');
    my ($n) = $s =~ /cmdstat_evalsha:calls=(\d+)/;
    return $n // 0;
}

sub eval_calls {
    my ($port) = @_;
    my $s = data($port, 'INFO', 'commandstats');
    my ($n) = $s =~ /cmdstat_eval:calls=(\d+)/;
    return $n // 0;
}

# left over by an earlier run that was killed: refuse rather than misread
for my $port ($P1, $P2, @SP, $DEAD_SP) {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 1);
    BAIL_OUT("port $port is taken (a process left by an earlier run?)")
        if $s;
}

start_data($P1);
start_data($P2, $P1);
start_sentinel($_) for @SP;
ok settled($P1, $P2), 'the topology is up: three Sentinels name the primary';

# ------------------------------------------------------------------
# nginx

sub http_conf {
    my (%o) = @_;
    my $sentinels = $o{sentinels} // join ' ', map { "127.0.0.1:$_" } @SP;
    my $spw = $o{sentinel_password} // $SENT_PW;
    my $name = $o{name} // $NAME;
    return qq{
    dify_status_redis $sentinels sentinel=$name
                      sentinel_password=$spw password=$DATA_PW
                      timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_fallback deny;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /v1/ {
            dify_status on;
            dify_status_limit rate=5 r/h;
            proxy_pass http://upstream;
        }

        location /big/v1/ {
            dify_status on;
            dify_status_limit rate=1000000 r/h;
            proxy_pass http://upstream;
        }

        location = /metrics {
            dify_status_metrics;
        }
    }
};
}

sub metric {
    my ($tt, $name) = @_;
    my $r = $tt->http('GET', '/metrics');
    my ($v) = $r->{body} =~ /^\Q$name\E (\d+)$/m;
    return $v // -1;
}

# N requests of one key, one after the other: their statuses
sub statuses {
    my ($tt, $key, $n, %o) = @_;
    return join ' ', map { patch($tt, $key, %o)->{status} } 1 .. $n;
}

# a request answered by Redis once a primary is known
sub ready {
    my ($tt) = @_;
    return wait_for(DifyTest::timeout(10), sub {
        patch($tt, fresh_key('ready'), prefix => '/big/v1')->{status} == 200;
    });
}

$t->start_nginx(http => http_conf(), workers => 2);

ok ready($t), 'a primary is found: requests are decided by Redis';
like $t->error_log, qr/redis sentinel "\Q$NAME\E": the primary is "127\.0\.0\.1:$P1"/,
    'the primary found is logged';

{
    my $key = fresh_key('before');
    is statuses($t, $key, 7), '200 200 200 200 200 429 429',
        'exact counts on the primary named: 5 of rate=5 r/h';
    ok evalsha_calls($P1) > 0, 'the script runs on the primary';
    is evalsha_calls($P2), 0, 'not on the replica';
}

# ------------------------------------------------------------------
# traffic in a child: one request after another until told to stop,
# each status written to a file

sub start_traffic {
    my ($tt, $file) = @_;
    my $stop = "$file.stop";
    unlink $stop;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if ($pid == 0) {
        open my $out, '>', $file or POSIX::_exit(1);
        $out->autoflush(1);
        my $key = fresh_key('traffic');
        until (-e $stop) {
            my $r = eval { patch($tt, $key, prefix => '/big/v1',
                                 timeout => DifyTest::timeout(10)) }
                    // { status => 0 };
            my $code = $r->{json} ? $r->{json}{code} // '' : '';
            printf $out "%d %s %.3f\n", $r->{status}, $code, time;
        }
        close $out;
        POSIX::_exit(0);
    }
    return { pid => $pid, file => $file, stop => $stop };
}

sub stop_traffic {
    my ($tr) = @_;
    open my $fh, '>', $tr->{stop} or die $!;
    close $fh;
    waitpid $tr->{pid}, 0;
    open $fh, '<', $tr->{file} or die $!;
    my @lines = map { chomp; [ split / / ] } <$fh>;
    close $fh;
    return @lines;
}

# the answers of a traffic run: all 200 or the deny fallback's 503
sub answers_ok {
    my ($name, @lines) = @_;
    my %seen;
    $seen{"$_->[0] $_->[1]"}++ for @lines;
    my @bad = grep { $_ ne '200 ' && $_ ne '503 service_unavailable' }
        keys %seen;
    ok @lines > 0 && !@bad,
        "$name: every answer is 200 or the fallback's 503 ("
        . join(', ', map { "$_: $seen{$_}" } sort keys %seen) . ')'
        or diag explain \%seen;
}

# polls until the Sentinels name $port; then until its evalsha count
# grows, within a second (scaled)
sub follows {
    my ($name, $port) = @_;
    my $named = wait_for(DifyTest::timeout(30), sub {
        (grep { named($_) eq $port } @SP) > 0 });
    ok $named, "$name: the Sentinels name $port";
    my $t0 = time;
    my $base = evalsha_calls($port);
    my $on = wait_for(DifyTest::timeout(1),
                      sub { evalsha_calls($port) > $base });
    ok $on, "$name: the module's script runs on $port within "
        . DifyTest::timeout(1) . 's of that'
        or diag sprintf 'waited %.3f s', time - $t0;
}

# ------------------------------------------------------------------
# SENTINEL FAILOVER under traffic

my $carried = fresh_key('carried');
is statuses($t, $carried, 3), '200 200 200', 'a key spends 3 of 5';
like data($P1, 'WAIT', 1, 2000), qr/^1$/, 'replicated to the replica';

my $failovers = metric($t, 'dify_status_redis_failovers_total');
my $refreshes = metric($t, 'dify_status_redis_topology_refreshes_total');
my $noscript = metric($t, 'dify_status_redis_noscript_total');

my $tr = start_traffic($t, "$DIR/traffic1");
sleep 0.5;
like sent($SP[0], 'SENTINEL', 'FAILOVER', $NAME), qr/^OK$/,
    'SENTINEL FAILOVER';
follows('SENTINEL FAILOVER', $P2);
sleep 0.5;
my @lines = stop_traffic($tr);
answers_ok('SENTINEL FAILOVER', @lines);
ok((grep { $_->[0] == 200 } @lines[-3 .. -1]) == 3,
   'SENTINEL FAILOVER: the last answers are decided by Redis again');

ok metric($t, 'dify_status_redis_failovers_total') > $failovers,
    'the failover is counted (dify_status_redis_failovers_total)';
ok metric($t, 'dify_status_redis_topology_refreshes_total') >= $refreshes,
    'dify_status_redis_topology_refreshes_total is exposed';
is metric($t, 'dify_status_redis_noscript_total'), $noscript,
    'the script was loaded on the new primary by its handshake (no NOSCRIPT)';
like $t->error_log,
    qr/redis sentinel "\Q$NAME\E": the primary is "127\.0\.0\.1:$P2" \(was "127\.0\.0\.1:$P1"\)/,
    'the switch is logged';

{
    my $m = $t->http('GET', '/metrics')->{body};
    my %up = $m =~ /^dify_status_redis_connections_up\{node="([^"]+)"\} (\d+)$/mg;
    my %cmds = $m =~ /^dify_status_redis_node_commands_total\{node="([^"]+)"\} (\d+)$/mg;
    is_deeply \%up, { "127.0.0.1:$P1" => 0, "127.0.0.1:$P2" => 2 },
        'connections_up by node: both workers on the new primary, none '
        . 'on the old' or diag $m;
    ok(($cmds{"127.0.0.1:$P1"} // 0) > 0 && ($cmds{"127.0.0.1:$P2"} // 0) > 0,
       'node_commands_total: the new primary is a node of its own')
        or diag $m;
    ok !grep({ /:2638[234]$/ } keys %up, keys %cmds),
        'the Sentinels are no data nodes in the metrics';
}

is statuses($t, $carried, 3), '200 200 429',
    'exact counts after the failover: the state carried over (2 left)';
{
    my $key = fresh_key('after1');
    is statuses($t, $key, 6), '200 200 200 200 200 429',
        'exact counts after the failover: a new key gets 5';
}
ok settled($P2, $P1), 'the old primary is the new one\'s replica';

# ------------------------------------------------------------------
# kill -9 of the primary under traffic

# a Sentinel does not fail the same master over again within twice the
# failover-timeout
sleep 2.5;

$failovers = metric($t, 'dify_status_redis_failovers_total');
$tr = start_traffic($t, "$DIR/traffic2");
sleep 0.5;
$t->_stop_proc($t->{procs}{"redis$P2"}, 'KILL', 10);
follows('kill -9', $P1);
sleep 0.5;
@lines = stop_traffic($tr);
answers_ok('kill -9', @lines);
ok((grep { $_->[0] == 200 } @lines[-3 .. -1]) == 3,
   'kill -9: the last answers are decided by Redis again');
ok((grep { $_->[0] == 503 } @lines) > 0,
   'kill -9: the outage took the fallback meanwhile');
ok metric($t, 'dify_status_redis_failovers_total') > $failovers,
    'kill -9: the failover is counted';
{
    my $key = fresh_key('after2');
    is statuses($t, $key, 6), '200 200 200 200 200 429',
        'exact counts after kill -9: a new key gets 5';
}

# ------------------------------------------------------------------
# a primary demoted behind the Sentinels' back (REPLICAOF, which keeps
# the clients connected): READONLY takes the fallback and makes the
# workers ask the Sentinels again; back to a primary, Redis decides again

{
    # quiet first: no question due (a retry waits 1 s at most)
    my $refreshes = metric($t, 'dify_status_redis_topology_refreshes_total');
    ok wait_for(DifyTest::timeout(10), sub {
        sleep 1.2;
        my $n = metric($t, 'dify_status_redis_topology_refreshes_total');
        return 1 if $n == $refreshes;
        $refreshes = $n;
        return 0;
    }), 'no question to the Sentinels while the primary answers';
    like data($P1, 'REPLICAOF', '127.0.0.1', $DEAD_SP), qr/^OK/,
        'the primary demoted by hand';
    my $r = patch($t, fresh_key('ro'), prefix => '/big/v1');
    is $r->{status}, 503, 'READONLY: the fallback (deny)';
    ok wait_for(DifyTest::timeout(2), sub {
        metric($t, 'dify_status_redis_topology_refreshes_total') > $refreshes
    }), 'READONLY: the Sentinels are asked again';
    like data($P1, 'REPLICAOF', 'NO', 'ONE'), qr/^OK/, 'a primary again';
    ok ready($t), 'requests are decided by Redis again';
    like $t->error_log, qr/answered "READONLY/, 'READONLY is logged';
    ok settled($P1), 'the Sentinels still name it';
}

# ------------------------------------------------------------------
# the admin tool asks the Sentinels for the primary (the first listed is
# down; the Sentinels' password apart from the data nodes')

sub tool {
    my ($stdin, %env) = @_;
    my @args = @{ delete $env{args} };
    local @ENV{ keys %env } = values %env;
    local $ENV{REDISCLI_AUTH};
    delete $ENV{REDISCLI_AUTH};
    local $SIG{PIPE} = 'IGNORE';
    my $pid = IPC::Open3::open3(my $in, my $out, undef, 'bash',
                                "$FindBin::Bin/../tools/dify-status-limit",
                                @args);
    print $in $stdin if defined $stdin;
    close $in;
    my $output = do { local $/; <$out> } // '';
    waitpid $pid, 0;
    return ($? >> 8, $output);
}

{
    my $key = fresh_key('tool');
    my %env = (DIFY_REDIS_SENTINELS => "127.0.0.1:$DEAD_SP,127.0.0.1:$SP[1]",
               DIFY_REDIS_SENTINEL_SERVICE_NAME => $NAME,
               DIFY_REDIS_SENTINEL_PASSWORD => $SENT_PW,
               DIFY_REDIS_PASSWORD => $DATA_PW,
               DIFY_REDIS_HOST => '127.0.0.1', DIFY_REDIS_PORT => $DEAD_SP);
    my ($rc, $out) = tool("$key\n", %env, args => [ 'block', '-' ]);
    is $rc, 0, 'dify-status-limit --sentinels ...: block' or diag $out;
    my $hash = DifyLimit::key_hash($key);
    is data($P1, 'HGET', "dify:status:{$hash}:limit", 'blocked'), '1',
        'the tool wrote to the primary the Sentinels name';
    is patch($t, $key)->{status}, 403, 'and nginx applies it';

    ($rc, $out) = tool("$key\n", %env,
                       DIFY_REDIS_SENTINEL_SERVICE_NAME => 'nosuchmaster',
                       args => [ 'show', '-' ]);
    is $rc, 1, 'a wrong service name: exit 1';
    like $out, qr/no Sentinel named a primary for "nosuchmaster"/,
        'a wrong service name: a clear message';

    ($rc, $out) = tool("$key\n", %env, DIFY_REDIS_SENTINEL_PASSWORD => 'x',
                       args => [ 'show', '-' ]);
    is $rc, 1, 'a wrong Sentinel password: exit 1';
    unlike $out, qr/\Q$DATA_PW\E|\Q$SENT_PW\E/, 'no password shown';

    ($rc, $out) = tool("$key\n", %env, DIFY_REDIS_SENTINEL_SERVICE_NAME => '',
                       args => [ 'show', '-' ]);
    is $rc, 2, '--sentinels without --sentinel-name: a usage error';
}

$t->stop_nginx;

# ------------------------------------------------------------------
# a Sentinel down, a wrong Sentinel password, a wrong service name

{
    my $t2 = DifyTest->new;
    $t2->start_nginx(http => http_conf(
        sentinels => join(' ', "127.0.0.1:$DEAD_SP",
                          map { "127.0.0.1:$_" } @SP)));
    ok ready($t2), 'the first Sentinel down: the next one is asked';
    my $key = fresh_key('down');
    is statuses($t2, $key, 6), '200 200 200 200 200 429',
        'a Sentinel down: exact counts';
    unlike $t2->error_log, qr/redis sentinel "\Q$NAME\E": no sentinel/,
        'a Sentinel down: no "no sentinel" error';
    $t2->done;
}

{
    my $t2 = DifyTest->new;
    $t2->start_nginx(http => http_conf(sentinel_password => 'bad-sentinel-pw-26'));
    my $r = wait_for(DifyTest::timeout(5), sub {
        $t2->error_log =~ /no sentinel answered/ });
    ok $r, 'a wrong Sentinel password: "no sentinel answered" is logged';
    like $t2->error_log, qr/AUTH failed: WRONGPASS/,
        'with the reason (AUTH failed: WRONGPASS)';
    unlike $t2->error_log, qr/bad-sentinel-pw-26|\Q$DATA_PW\E/,
        'no password in the log';
    $r = patch($t2, fresh_key('wrongpw'));
    is $r->{status}, 503, 'a wrong Sentinel password: the fallback (deny)';
    $t2->done;
}

{
    my $t2 = DifyTest->new;
    $t2->start_nginx(http => http_conf(name => 'nosuchmaster'));
    my $r = wait_for(DifyTest::timeout(5), sub {
        $t2->error_log =~ /no sentinel knows a master named "nosuchmaster"/
    });
    ok $r, 'a wrong service name: "no sentinel knows a master named" logged';
    my @n = $t2->error_log =~ /no sentinel knows/g;
    is scalar @n, 1, 'logged once (per worker), not once per attempt';
    $r = patch($t2, fresh_key('wrongname'));
    is $r->{status}, 503, 'a wrong service name: the fallback (deny)';
    $t2->done;
}

# ------------------------------------------------------------------
# TLS: a primary with only a tls-port and a Sentinel with only one
# (quorum 1, no failover here), certificates verified by IP address;
# the admin tool over TLS too

SKIP: {
    skip 'redis-server or redis-cli without TLS', 6
        unless `redis-cli --help 2>&1` =~ /--tls/;

    my $pki = "$DIR/pki";
    mkdir $pki;
    my $ssl = sub {
        my $out = `openssl @_ 2>&1`;
        die "openssl @_: $out" if $?;
    };
    $ssl->("req -x509 -newkey rsa:2048 -nodes -keyout $pki/ca.key"
           . " -out $pki/ca.crt -days 2 -subj /CN=ca");
    open my $fh, '>', "$pki/ext" or die $!;
    print $fh "subjectAltName=IP:127.0.0.1\n";
    close $fh;
    $ssl->("req -newkey rsa:2048 -nodes -keyout $pki/server.key"
           . " -out $pki/server.csr -subj /CN=redis.test");
    $ssl->("x509 -req -in $pki/server.csr -CA $pki/ca.crt -CAkey $pki/ca.key"
           . " -CAcreateserial -out $pki/server.crt -days 2"
           . " -extfile $pki/ext");

    my ($TP, $TS) = (26386, 26387);
    my @tls = ('--tls-cert-file', "$pki/server.crt",
               '--tls-key-file', "$pki/server.key",
               '--tls-ca-cert-file', "$pki/ca.crt",
               '--tls-auth-clients', 'no');
    mkdir "$DIR/r$TP";
    $t->_spawn("tlsredis$TP",
        [ 'redis-server', '--port', 0, '--tls-port', $TP,
          '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
          '--dir', "$DIR/r$TP", '--daemonize', 'no',
          '--logfile', "$DIR/redis$TP.log", '--requirepass', $DATA_PW,
          @tls ],
        output => "$DIR/redis$TP.stderr");

    open $fh, '>', "$DIR/sentinel$TS.conf" or die $!;
    print $fh join "\n",
        'port 0', "tls-port $TS", 'bind 127.0.0.1', 'daemonize no',
        "dir $DIR", "logfile $DIR/sentinel$TS.log",
        "tls-cert-file $pki/server.crt", "tls-key-file $pki/server.key",
        "tls-ca-cert-file $pki/ca.crt", 'tls-auth-clients no',
        'tls-replication yes', "requirepass $SENT_PW",
        "sentinel monitor tlsmaster 127.0.0.1 $TP 1",
        "sentinel auth-pass tlsmaster $DATA_PW", '';
    close $fh;
    $t->_spawn("sentinel$TS", [ @SENTINEL_BIN, "$DIR/sentinel$TS.conf",
                                @SENTINEL_ARG ],
               output => "$DIR/sentinel$TS.stderr");

    my @tcli = ('--tls', '--cacert', "$pki/ca.crt");
    my $named = wait_for(DifyTest::timeout(10), sub {
        cli($TS, $SENT_PW, @tcli, 'SENTINEL', 'get-master-addr-by-name',
            'tlsmaster') =~ /\n$TP$/;
    });
    ok $named, 'TLS: the Sentinel names the TLS primary';

    my $t2 = DifyTest->new;
    $t2->start_nginx(http => qq{
    dify_status_redis 127.0.0.1:$TS sentinel=tlsmaster
                      sentinel_password=$SENT_PW password=$DATA_PW ssl
                      timeout=${REDIS_TIMEOUT}s;
    dify_status_redis_ssl_trusted_certificate $pki/ca.crt;
    dify_status_redis_fallback deny;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /v1/ {
            dify_status on;
            dify_status_limit rate=5 r/h;
            proxy_pass http://upstream;
        }

        location /big/v1/ {
            dify_status on;
            dify_status_limit rate=1000000 r/h;
            proxy_pass http://upstream;
        }
    }
});
    ok ready($t2), 'TLS: a primary is found through a TLS Sentinel';
    my $key = fresh_key('tls');
    is statuses($t2, $key, 6), '200 200 200 200 200 429',
        'TLS: exact counts on the TLS primary';
    like $t2->error_log,
        qr/redis sentinel "tlsmaster": the primary is "127\.0\.0\.1:$TP"/,
        'TLS: the primary found is logged';

    # a key not limited yet: a limited one is refused from shared memory
    $key = fresh_key('tlstool');
    my ($rc, $out) = tool("$key\n",
        DIFY_REDIS_SENTINELS => "127.0.0.1:$TS",
        DIFY_REDIS_SENTINEL_SERVICE_NAME => 'tlsmaster',
        DIFY_REDIS_SENTINEL_PASSWORD => $SENT_PW,
        DIFY_REDIS_PASSWORD => $DATA_PW,
        args => [ '--tls', '--cacert', "$pki/ca.crt", 'block', '-' ]);
    is $rc, 0, 'TLS: the admin tool through a TLS Sentinel' or diag $out;
    is patch($t2, $key)->{status}, 403, 'TLS: and nginx applies its block';
    $t2->done;
}

# ------------------------------------------------------------------
# configuration errors

{
    my $t2 = DifyTest->new;
    my @bad = (
        [ 'dify_status_redis 127.0.0.1:1 127.0.0.1:2;',
          qr/several addresses need "cluster" \(seed nodes\) or "sentinel="/ ],
        [ 'dify_status_redis 127.0.0.1:1 127.0.0.1:2 cluster sentinel=m;',
          qr/"cluster" and "sentinel=" cannot be used together/ ],
        [ 'dify_status_redis 127.0.0.1:1 127.0.0.1:1 sentinel=m;',
          qr/duplicate address "127\.0\.0\.1:1"/ ],
        [ 'dify_status_redis 127.0.0.1:1 tls sentinel=m;',
          qr/invalid parameter "tls"/ ],
        [ 'dify_status_redis 127.0.0.1:1 sentinel=;',
          qr/invalid parameter "sentinel="/ ],
        [ 'dify_status_redis 127.0.0.1:1 sentinel_password=;',
          qr/invalid parameter "sentinel_password="/ ],
        [ 'dify_status_redis 127.0.0.1:1 sentinel_password=x;',
          qr/"sentinel_user=" and "sentinel_password=" require "sentinel="/ ],
        [ 'dify_status_redis 127.0.0.1:1 sentinel=m sentinel_user=u;',
          qr/"sentinel_user=" requires "sentinel_password="/ ],
        [ 'dify_status_redis 127.0.0.1:1 bad..name:26379 sentinel=m;',
          qr/invalid address "bad\.\.name:26379"/ ],
        [ 'dify_status_redis 127.0.0.1:1 sentinel=m password=;',
          qr/invalid parameter "password="/ ],
    );
    for my $b (@bad) {
        my ($rc, $out) = $t2->nginx_t(http => "    $b->[0]\n");
        subtest "nginx -t: $b->[0]" => sub {
            isnt $rc, 0, 'nginx -t fails';
            like $out, qr/\[emerg\]/, 'an [emerg] message';
            like $out, $b->[1], 'the message is clear';
            like $out, qr/\.conf:\d+/, 'it names the file and line';
        } or diag $out;
    }
    my ($rc, $out) = $t2->nginx_t(http =>
        "    dify_status_redis 127.0.0.1:1 127.0.0.1:2 localhost:3 "
        . "sentinel=m sentinel_user=u sentinel_password=p db=2 ssl "
        . "user=a password=b;\n");
    is $rc, 0, 'nginx -t: several Sentinels, a host name, every parameter'
        or diag $out;
    $t2->done;
}

$t->done;
done_testing;
