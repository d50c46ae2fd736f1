pub fn validate() {} pub struct PlanError;
