// The agent's output ring (SPSC, whole records, losses counted) and message encoding.
#include "agent/ring.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>

#include "agent/protocol.h"

namespace hp::agent {
namespace {

TEST(Ring, RecordsComeOutWholeAndInOrder) {
  Ring r(64);
  EXPECT_TRUE(r.write("hello "));
  EXPECT_TRUE(r.write("world\n"));
  std::string out;
  r.drain(out);
  EXPECT_EQ(out, "hello world\n");
  EXPECT_EQ(r.lost(), 0u);
}

TEST(Ring, WhatDoesNotFitIsCountedNotWritten) {
  Ring r(32);
  EXPECT_TRUE(r.write(std::string(20, 'a')));    // 24 bytes with the length
  EXPECT_FALSE(r.write(std::string(10, 'b')));   // 14 more do not fit in 32
  EXPECT_FALSE(r.write(std::string(100, 'c')));  // never fits
  EXPECT_EQ(r.lost(), 2u);
  std::string out;
  r.drain(out);
  EXPECT_EQ(out, std::string(20, 'a'));
  EXPECT_TRUE(r.write(std::string(20, 'd')));  // space is back, wrapping around the end
  out.clear();
  r.drain(out);
  EXPECT_EQ(out, std::string(20, 'd'));
}

TEST(Ring, ResetAfterForkDropsTheParentsPendingOutput) {
  Ring r(64);
  ASSERT_TRUE(r.write("parent"));
  r.reset_after_fork();
  ASSERT_TRUE(r.write("child"));
  std::string out;
  r.drain(out);
  EXPECT_EQ(out, "child");
}

// A producer and a consumer on two threads: every record arrives whole, in order, or is
// counted as lost; delivered + lost == written.
TEST(Ring, ConcurrentProducerAndConsumerLoseNothingSilently) {
  Ring r(256);
  constexpr int kRecords = 20000;
  std::atomic<bool> done{false};
  std::thread producer([&] {
    for (int i = 0; i < kRecords; ++i)
      r.write(std::to_string(i) + ";");
    done.store(true);
  });
  std::string out;
  while (!done.load())
    r.drain(out);
  producer.join();
  r.drain(out);
  int delivered = 0, last = -1;
  std::size_t pos = 0;
  while (pos < out.size()) {
    auto semi = out.find(';', pos);
    ASSERT_NE(semi, std::string::npos) << "a record arrived cut";
    int v = std::stoi(out.substr(pos, semi - pos));
    EXPECT_GT(v, last) << "records out of order";
    last = v;
    ++delivered;
    pos = semi + 1;
  }
  EXPECT_EQ(static_cast<std::uint64_t>(delivered) + r.lost(), static_cast<std::uint64_t>(kRecords));
}

TEST(Protocol, StartMessageRoundTrips) {
  StartOptions o;
  o.format = 1;
  o.follow_forks = 1;
  std::string m = encode_start(o, "trace.bt", "BEGIN { exit(); }");
  ASSERT_EQ(m[0], static_cast<char>(Msg::start));
  auto s = decode_start(std::string_view(m).substr(1));
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->options.format, 1);
  EXPECT_EQ(s->options.follow_forks, 1);
  EXPECT_EQ(s->filename, "trace.bt");
  EXPECT_EQ(s->source, "BEGIN { exit(); }");
  EXPECT_FALSE(decode_start(std::string_view(m).substr(1, 5)).has_value());
}

}  // namespace
}  // namespace hp::agent
