#!/usr/bin/perl
#
# Clients that give up, for t/40-faults-load.t (core Perl only).
#
#   abort-clients.pl --port N --prefix KEYPREFIX --modes allow,deny,local
#                    --duration S --out FILE [--max N] [--pause S]
#
# Until --duration seconds have passed (or --max connections were made,
# or SIGTERM), in turn for each mode:
#
#   body  sends a valid PATCH's head (Content-Length of the whole body)
#         and half of its body, then closes: aborted mid-body
#   wait  sends a whole valid PATCH, then closes at once without reading:
#         aborted while the module waits for Redis (or just after)
#
# to /MODE/g/v1/datasets/.../documents/status/enable, with the API key
# KEYPREFIX . MODE . "-body" or "-wait" (one key per kind and mode, so
# that the test can tell these requests apart in the access log).
# Sleeps --pause seconds (default 0.005) between two connections.
# Writes "KIND MODE COUNT" lines, and "connect_failed N", to --out.

use strict;
use warnings;

use IO::Socket::INET;
use Time::HiRes qw(time sleep);

my %opt = (pause => 0.005, max => 50000, modes => 'allow,deny,local');
while (@ARGV) {
    my $k = shift @ARGV;
    $k =~ s/^--// or die "abort-clients.pl: bad argument $k\n";
    $opt{$k} = shift @ARGV;
}
for (qw(port prefix duration out)) {
    die "abort-clients.pl: --$_ is required\n" unless defined $opt{$_};
}

my $stop = 0;
$SIG{TERM} = $SIG{INT} = sub { $stop = 1 };
$SIG{PIPE} = 'IGNORE';

my @modes = split /,/, $opt{modes};
my $dataset = '5b7ac1f4-2c9e-4d8a-b3f6-0e1d2c3b4a59';
my $body = '{"document_ids": ["a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"]}';

sub request_bytes {
    my ($mode, $kind) = @_;
    my $key = "$opt{prefix}$mode-$kind";
    return "PATCH /$mode/g/v1/datasets/$dataset/documents/status/enable "
         . "HTTP/1.1\r\n"
         . "Host: localhost\r\n"
         . "Authorization: Bearer $key\r\n"
         . "Content-Type: application/json\r\n"
         . "Content-Length: " . length($body) . "\r\n"
         . "\r\n";
}

my %count;
my $failed = 0;
my $deadline = time + $opt{duration};
my $n = 0;

while (!$stop && time < $deadline && $n < $opt{max}) {
    for my $kind (qw(body wait)) {
        for my $mode (@modes) {
            last if $stop || time >= $deadline;
            $n++;
            my $s = IO::Socket::INET->new(
                PeerAddr => '127.0.0.1', PeerPort => $opt{port},
                Proto => 'tcp', Timeout => 1);
            if (!$s) {
                $failed++;
                sleep 0.01;
                next;
            }
            binmode $s;
            my $head = request_bytes($mode, $kind);
            my $bytes = $kind eq 'body'
                ? $head . substr($body, 0, int(length($body) / 2))
                : $head . $body;
            syswrite $s, $bytes;
            # mid-body: let nginx read the half body before the close
            sleep 0.002 if $kind eq 'body';
            close $s;
            $count{"$kind $mode"}++;
            sleep $opt{pause};
        }
    }
}

open my $fh, '>', $opt{out} or die "abort-clients.pl: $opt{out}: $!\n";
print $fh "$_ $count{$_}\n" for sort keys %count;
print $fh "connect_failed $failed\n";
close $fh;
exit 0;
