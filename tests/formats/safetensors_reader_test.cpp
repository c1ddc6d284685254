// Every validation rule of the reader, on hand-made files, and the message it gives.
#include <gtest/gtest.h>

#include "revmerge/error.hpp"
#include "revmerge/safetensors.hpp"
#include "test_util.hpp"

namespace revmerge {
namespace {

using test::safetensors_bytes;

// Parses `bytes` as a file named "bad.safetensors"; returns the format_error message.
std::string rejection(const std::string& bytes) {
  try {
    parse_safetensors_header(std::as_bytes(std::span(bytes.data(), bytes.size())), "bad.safetensors");
  } catch (const format_error& e) {
    return e.what();
  }
  return "(accepted)";
}

const std::string kGood =
    R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[8,12]}})";

TEST(SafetensorsReader, AcceptsAWellFormedFile) {
  const auto file = safetensors_bytes(kGood, std::string(12, 'x'));
  const auto h = parse_safetensors_header(std::as_bytes(std::span(file)), "good");
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_EQ(h.tensors[1].dtype, DType::BF16);
  EXPECT_EQ(h.data_start, 8 + kGood.size());
}

TEST(SafetensorsReader, AcceptsMetadataPaddingAndEmptyTensors) {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"e":{"dtype":"F16","shape":[0,3],"data_offsets":[0,0]},"x":{"dtype":"U8","shape":[],"data_offsets":[0,1]}}   )";
  const auto file = safetensors_bytes(header, "z");
  const auto h = parse_safetensors_header(std::as_bytes(std::span(file)), "meta");
  EXPECT_EQ(h.metadata.at("format"), "pt");
  EXPECT_EQ(h.tensors.size(), 2u);
}

struct Case {
  const char* rule;
  std::string bytes;
  const char* message;  // a fragment the error must contain
};

std::vector<Case> bad_cases() {
  const std::string data12(12, 'x');
  return {
      {"truncated length", std::string(5, '\0'), "shorter than the 8-byte header length"},
      {"header past end", safetensors_bytes(kGood, data12, 4096), "runs past the end"},
      {"header over limit", safetensors_bytes(kGood, data12, (100ull << 20) + 1), "exceeds the limit"},
      {"not an object", safetensors_bytes("[1,2]   ", ""), "does not start with a JSON object"},
      {"bad json", safetensors_bytes(R"({"a":{"dtype":"F32",)", ""), "invalid JSON"},
      {"bad utf8", safetensors_bytes("{\"\xff\":1}", ""), "invalid JSON"},
      {"duplicate name",
       safetensors_bytes(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})", "xx"),
       "duplicate key 'a'"},
      {"unknown dtype",
       safetensors_bytes(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", std::string(16, 'x')),
       "tensor 'a': unknown dtype 'F128'"},
      {"wrong byte count",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x')),
       "tensor 'a': shape × dtype size is 12 bytes but data_offsets span 8"},
      {"overlap",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, 'x')),
       "tensor 'b': data_offsets [4, 8) overlap the previous tensor"},
      {"gap",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, 'x')),
       "tensor 'a': data is not contiguous"},
      {"offset past end",
       safetensors_bytes(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, 'x')),
       "run past the 8-byte data buffer"},
      {"trailing bytes", safetensors_bytes(kGood, data12 + "extra"), "file length is inconsistent"},
      {"end before begin",
       safetensors_bytes(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", std::string(4, 'x')),
       "end 0 is before begin 4"},
      {"negative dim",
       safetensors_bytes(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", ""),
       "shape entries must be non-negative"},
      {"overflowing shape",
       safetensors_bytes(R"({"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
       "shape size overflows"},
      {"missing offsets", safetensors_bytes(R"({"a":{"dtype":"U8","shape":[0]}})", ""),
       "data_offsets must be [begin, end]"},
      {"unknown field",
       safetensors_bytes(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0],"x":1}})", ""),
       "unknown field 'x'"},
      {"metadata not strings", safetensors_bytes(R"({"__metadata__":{"k":1}})", ""),
       "__metadata__ value 'k' is not a string"},
  };
}

TEST(SafetensorsReader, RejectsEachBrokenRuleNamingFileAndTensor) {
  for (const auto& c : bad_cases()) {
    const auto msg = rejection(c.bytes);
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << c.rule << ": " << msg;
    EXPECT_NE(msg.find(c.message), std::string::npos) << c.rule << ": " << msg;
  }
}

TEST(SafetensorsReader, DeepNestingIsRefusedBeforeParsingFurther) {
  std::string header = "{\"a\":";
  for (int i = 0; i < 50; ++i) header += "[";
  for (int i = 0; i < 50; ++i) header += "]";
  header += "}";
  EXPECT_NE(rejection(safetensors_bytes(header, "")).find("nests deeper"), std::string::npos);
}

TEST(SafetensorsReader, TooManyTensorsAreRefusedWhileParsing) {
  std::string header = "{";
  for (std::size_t i = 0; i <= kMaxSafetensorsTensors + 1; ++i)  // one past the limit + __metadata__
    header += (i ? ",\"t" : "\"t") + std::to_string(i) + R"(":{"dtype":"U8","shape":[0],"data_offsets":[0,0]})";
  header += "}";
  const auto msg = rejection(safetensors_bytes(header, ""));
  EXPECT_NE(msg.find("more than 262145 entries"), std::string::npos) << msg.substr(0, 200);
}

TEST(SafetensorsReader, OpensFilesAndConvertsOnRead) {
  test::TempDir dir;
  const float vals[2] = {1.5f, -2.0f};
  const std::uint16_t bf[2] = {0x3fc0, 0xc000};  // 1.5, -2 in bfloat16
  std::string data(reinterpret_cast<const char*>(vals), 8);
  data.append(reinterpret_cast<const char*>(bf), 4);
  test::write_bytes(dir / "t.safetensors", safetensors_bytes(kGood, data));
  const SafetensorsFile f(dir / "t.safetensors");
  EXPECT_EQ(f.read_f32("a"), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f.read_f64("b"), (std::vector<double>{1.5, -2.0}));
  try {
    f.at("missing");
    FAIL();
  } catch (const format_error& e) {
    EXPECT_NE(std::string(e.what()).find("no tensor named 'missing'"), std::string::npos);
  }
  EXPECT_THROW(SafetensorsFile(dir / "absent.safetensors"), io_error);
}

}  // namespace
}  // namespace revmerge
