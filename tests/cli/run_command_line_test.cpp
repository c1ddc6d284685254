// The commands as a library (host/cli/run.hpp), as the Python package runs them: what a command
// prints goes to the stream given, each command line starts from the defaults, and refusals are
// exceptions carrying the program's message.
#include "cli/run.hpp"

#include <gtest/gtest.h>

#include <sstream>

#include "revmerge/error.hpp"

namespace revmerge {
namespace {

const std::string kAdapter = std::string(REVMERGE_FIXTURES) + "/peft/plain";

TEST(RunCommandLine, PrintsToTheGivenStreamAndStartsFromTheDefaults) {
  std::ostringstream json, text;
  cli::run_command_line({"info", kAdapter, "--json"}, json);
  EXPECT_EQ(json.str().substr(0, 1), "{");
  cli::run_command_line({"info", kAdapter}, text);  // --json not carried over
  EXPECT_EQ(text.str().rfind("PEFT LoRA adapter", 0), 0u) << text.str();
  std::ostringstream help;
  cli::run_command_line({"merge", "--help"}, help);
  EXPECT_NE(help.str().find("--storage"), std::string::npos);
}

TEST(RunCommandLine, RefusalsAreExceptionsWithTheProgramsMessage) {
  std::ostringstream out;
  try {
    cli::run_command_line({"merg"}, out);
    FAIL() << "no exception";
  } catch (const usage_error& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'merge'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cli::run_command_line({"info", kAdapter + "/missing"}, out), io_error);
  EXPECT_TRUE(out.str().empty());
}

}  // namespace
}  // namespace revmerge
