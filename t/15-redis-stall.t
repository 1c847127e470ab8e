#!/usr/bin/perl
#
# A slow pass of the event loop is the worker's delay, not Redis's.
#
# One worker, the default timeout=50ms.  An attacker sends bodies padded
# with 2 MiB of "{}," inside an unknown field (dify_status_max_documents 0
# disables any value budget, so jansson builds the whole tree): each takes
# over 100 ms to parse, and the 8 of a round are completed in the same
# pass, which then stalls the worker far past the timeout.  Meanwhile a
# bystander key sends a steady stream (every 20 ms) to a location whose
# fallback is deny.  Redis answers every command at once, so:
#
#   - the attacker's key gets exactly its burst (5) admitted, the rest 429,
#     and no request of it is decided by a fallback ($dify_status);
#   - the bystander gets no 503: every answer is decided by Redis;
#   - the error log has no "lost" / "reconnecting" / "unreachable" line;
#   - Redis's own counters (INFO commandstats) and the module's metrics
#     agree: every command sent was run, none timed out, no reconnection,
#     no fallback decision.
#
# On the code before the fix the request timer was armed from the cached
# clock of the stalled pass, and the command was written only in the next
# pass: every padded request took the fallback (all admitted), and the
# connection was judged hung, so the bystander got 503s.
#
# No assertion on timings; the padding is measured once and reported (diag).

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";

use Test::More;
use Time::HiRes qw(time sleep);
use DifyTest qw(uuid);
use DifyLimit qw(fresh_key key_hash patch patch_bytes send_pending wait_for);

DifyTest::require_module();

plan skip_all => 'far too slow under valgrind' if DifyTest->valgrind;

# "{}," x $PAD: 2 MiB, about 150 ms of jansson in a plain build; under
# ASan every allocation costs far more (64 KiB take about 500 ms)
my $PAD = (DifyTest->asan ? 64 : 2048) * 1024 / 3;
my $ROUNDS = 3;
my $BODIES = 8;                         # concurrent padded bodies a round
my $BURST = 5;

my $HTTP = q{
    dify_status_redis %%REDIS%%;
    log_format stall '$dify_status $status $dify_status_key';
    server {
        listen 127.0.0.1:%%PORT%%;
        client_max_body_size 8m;
        client_body_buffer_size 8m;

        location /v1/ {
            access_log %%DIR%%/attack.log stall;
            dify_status on;
            dify_status_max_body_size 8m;
            dify_status_max_documents 0;
            dify_status_limit rate=1 r/h burst=5;
            dify_status_redis_fallback allow;
            proxy_pass http://upstream;
        }

        location /b/v1/ {
            access_log %%DIR%%/bystander.log stall;
            dify_status on;
            dify_status_limit rate=100000 r/s burst=100000;
            dify_status_redis_fallback deny;
            proxy_pass http://upstream;
        }

        location = /metrics {
            access_log off;
            dify_status_metrics;
        }
    }
};

sub script_calls {
    my ($t) = @_;
    my $s = $t->redis('INFO', 'commandstats') // '';
    my $n = 0;
    $n += $1 while $s =~ /^cmdstat_eval(?:sha)?:calls=(\d+)/mg;
    return $n;
}

sub metrics {
    my ($t) = @_;
    my $r = $t->http('GET', '/metrics');
    my %m;
    for (split /\n/, $r->{body} // '') {
        next if /^#/;
        /^(\S+)\s+(\S+)$/ or next;
        $m{$1} = $2;
    }
    return \%m;
}

sub sum_of {
    my ($m, $re) = @_;
    my $n = 0;
    $n += $m->{$_} for grep { /$re/ } keys %$m;
    return $n;
}

sub log_lines {
    my ($t, $name) = @_;
    return map { [ split / / ] }
        split /\n/, DifyTest::_slurp($t->dir . "/$name.log");
}

# $dify_status_key: the first 12 hex digits of the key's SHA-256
sub short { return substr key_hash($_[0]), 0, 12 }

sub tally {
    my %n;
    $n{$_}++ for @_;
    return join ' ', map { "$_=$n{$_}" } sort keys %n;
}

my $pad = '{"document_ids": ["' . uuid(2) . '"], "padding": ['
          . ('{},' x $PAD) . '{}]}';

sub attack {
    my (%o) = @_;

    my $t = DifyTest->new;
    $t->start_redis;
    $t->start_nginx(http => $HTTP, %o);

    # Redis decides, before the attack
    my $probe = patch($t, fresh_key('probe'), prefix => '/b/v1');
    is $probe->{status}, 200, 'warm-up: the bystander location passes';

    my $attacker = fresh_key('attacker');
    my $bystander = fresh_key('bystander');

    # the cost of one padded body, for the report only
    my $t0 = time;
    my $one = patch($t, fresh_key('measure'), body => $pad);
    diag sprintf 'one padded body (%d bytes) answered in %.0f ms (status %d)',
        length $pad, 1000 * (time - $t0), $one->{status};

    my $calls0 = script_calls($t);
    my $m0 = metrics($t);
    my $mark = $t->log_mark;

    my (@attack, @bystand);

    for my $round (1 .. $ROUNDS) {
        my $bytes = patch_bytes($attacker, body => $pad);

        # everything but the last byte: nginx reads the bodies meanwhile,
        # and the last bytes complete them all in one pass of the event loop
        my @c = map { $t->connect } 1 .. $BODIES;
        $_->send(substr $bytes, 0, -1) for @c;
        sleep 0.5;

        my @b = map { send_pending($t, $bystander, prefix => '/b/v1') } 1 .. 3;

        my $s0 = time;
        $_->send(substr $bytes, -1) for @c;

        # the bystander's steady stream while the worker parses
        while (time - $s0 < 1.5) {
            push @b, send_pending($t, $bystander, prefix => '/b/v1');
            sleep 0.02;
        }

        my $wait = DifyTest::timeout(30);
        push @attack, map { DifyLimit::_read($_, $s0, $wait) } @c;
        push @bystand, map { DifyLimit::_read($_, $_->{t0}, $wait) } @b;
    }

    my @as = map { $_->{status} } @attack;
    my @bs = map { $_->{status} } @bystand;

    diag 'attacker: ' . tally(@as) . '; bystander: ' . tally(@bs);

    is scalar(grep { $_ == 200 } @as), $BURST,
        "the attacker's key got exactly its burst ($BURST) admitted";
    is scalar(grep { $_ == 429 } @as), @as - $BURST, 'and 429 for the rest';

    # a line is logged once its response is sent, maybe after the client read it
    my (@attack_log, @bl);
    wait_for(DifyTest::timeout(5), sub {
        @attack_log = grep { $_->[2] eq short($attacker) }
            log_lines($t, 'attack');
        @bl = grep { $_->[2] eq short($bystander) }
            log_lines($t, 'bystander');
        return @attack_log >= @attack && @bl >= @bystand;
    });

    is scalar(@attack_log), scalar(@attack), 'the attack is in the access log';
    is_deeply [ grep { $_->[0] =~ /^fallback/ } @attack_log ], [],
        'no attack request was decided by a fallback'
        or diag 'attack: ' . tally(map { "$_->[0]/$_->[1]" } @attack_log);

    ok @bs >= $ROUNDS * 20, 'the bystander sent a steady stream (' . @bs . ')';
    is scalar(grep { $_ == 503 } @bs), 0, 'the bystander got no 503';
    is scalar(grep { $_ != 200 } @bs), 0, 'every bystander request passed';

    is scalar(@bl), scalar(@bs), 'the bystander is in the access log';
    is scalar(grep { $_->[0] ne 'passed' } @bl), 0,
        'every bystander request was decided by Redis ($dify_status passed)'
        or diag 'bystander: ' . tally(map { "$_->[0]/$_->[1]" } @bl);

    my @lost = grep { /redis "[^"]*" (?:lost|unreachable)|reconnecting/ }
        split /\n/, $t->error_log_since($mark);
    is scalar(@lost), 0, 'the connection was never judged lost or hung'
        or diag join "\n", @lost[0 .. ($#lost < 4 ? $#lost : 4)];

    my $m1 = metrics($t);
    my $calls = script_calls($t) - $calls0;
    my $sent = ($m1->{dify_status_redis_commands_total} // 0)
               - ($m0->{dify_status_redis_commands_total} // 0);
    my $cached = ($m1->{dify_status_requests_limited_cached_total} // 0)
                 - ($m0->{dify_status_requests_limited_cached_total} // 0);
    my $decided = ($m1->{dify_status_redis_decisions_total} // 0)
                  - ($m0->{dify_status_redis_decisions_total} // 0);

    diag "script calls in Redis: $calls; commands sent: $sent; "
         . "decided by Redis: $decided; limited from shared memory: $cached";

    # one script call decides the requests of a worker's event-loop pass
    is $calls, $sent, 'Redis ran every command the module sent';
    cmp_ok $calls, '<=', $decided, 'no more script calls than decisions';
    is $decided + $cached, @attack + @bystand,
        'every request was decided by Redis or by its cached verdict';
    for my $name (qw(dify_status_redis_timeouts_total
                     dify_status_redis_reconnects_total
                     dify_status_redis_errors_total))
    {
        is(($m1->{$name} // 0) - ($m0->{$name} // 0), 0, "$name: none");
    }
    is sum_of($m1, qr/^dify_status_fallback_decisions_total/)
       - sum_of($m0, qr/^dify_status_fallback_decisions_total/), 0,
       'dify_status_fallback_decisions_total: none';

    $t->done;
}

subtest 'one worker' => sub { attack(workers => 1) };

# with the accept mutex, the worker that holds it posts its read events,
# which then run after the timers: a reply can wait unread behind them
subtest 'two workers, accept_mutex on' => sub {
    attack(workers => 2, events => "    accept_mutex on;\n");
};

done_testing;
